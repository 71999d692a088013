"""The `llm` runtime: a model, through the lab's gateway, proposes one change per trial.

The lab tests drive the real `overnight run` CLI on a throwaway git lab whose
[gateway] points at an in-process fake OpenAI provider with scripted replies;
what they check is what a user sees: the ledger, the trials in the store, what
the model was sent. The parser is tested on its own, with a property for the
round trip from a reply to the edited file.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from overnight.gateway.meter import Budgets
from overnight.lab.proposal import ProposerUnavailable
from overnight.org.config import OrgConfig
from overnight.org.gateway import BudgetsConfig, LimitConfig
from overnight.proposers import ProposerSetup, available, create
from overnight.proposers.edits import Edit, EditError, apply, parse, render
from overnight.proposers.llm import MAX_REASKS, LlmProposer
from overnight.records import AgentRecord, Trial, TrialStatus
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply
from tests.helpers.gateway import gateway, upstream
from tests.helpers.labs import fake_openai, llm_agent, make_lab
from tests.helpers.processes import run_cli

ENV = {"FAKE_OPENAI_KEY": "sk-upstream"}
GOOD = render("move X to 3", [Edit("exp.py", "X = 0.5\n", "X = 3\n")])  # score 22.25 -> 16
PROSE = "I would move X a little closer to 3, that should help the score."


def _lab(tmp_path: Path, fake: FakeProvider) -> Path:
    return make_lab(
        tmp_path / "lab",
        knobs=(),
        agents=[llm_agent()],
        gateway=fake_openai(fake.url, key_env="FAKE_OPENAI_KEY"),
    )


def _run(lab: Path, trials: int) -> None:
    result = run_cli("run", str(lab), "--trials", str(trials), env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def _trials(lab: Path) -> list[Trial]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        return [t for t in store.trials(run.id) if t.agent == "coder"]
    finally:
        store.close()


def _asks(fake: FakeProvider) -> list[list[dict[str, Any]]]:
    """The conversations the model was sent, oldest first."""
    return [r["body"]["messages"] for r in fake.requests if r["path"] == "/v1/chat/completions"]


# --- through `overnight run` -----------------------------------------------------------------


def test_a_good_edit_is_kept_a_worse_one_discarded_and_the_model_sees_the_history(
    tmp_path: Path, fake: FakeProvider
) -> None:
    worse = render("push Y up to 9", [Edit("exp.py", "Y = 5\n", "Y = 9\n")])
    fake.enqueue(Reply(text=f"Here is my change:\n\n```\n{GOOD}```\n"), Reply(text=worse))
    lab = _lab(tmp_path, fake)
    _run(lab, 2)

    first, second = _trials(lab)
    assert (first.status, first.metric, first.description) == (
        TrialStatus.kept, 16.0, "move X to 3",
    )  # fmt: skip
    assert first.proposal["edits"] == [
        {"path": "exp.py", "search": "X = 0.5\n", "replace": "X = 3\n"}
    ]
    assert (first.proposal["model"], first.proposal["replies"]) == ("smart", 1)
    assert (second.status, second.metric, second.description) == (
        TrialStatus.discarded, 64.0, "push Y up to 9",
    )  # fmt: skip
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    # (between the metric and the status: memory_gb, the run's peak RSS)
    assert re.search(r"\t16\.000000\t\d+\.\d+\tkeep\tmove X to 3\t", ledger)
    assert re.search(r"\t64\.000000\t\d+\.\d+\tdiscard\tpush Y up to 9\t", ledger)

    # the program, the editable file at the best commit, and the run so far
    one, two = (conversation[-1]["content"] for conversation in _asks(fake))
    files = one.split("# Editable files")[1]
    assert "Make score small." in one and "## exp.py" in files and "X = 0.5" in files
    assert "judge.py" not in files  # protected files are not offered
    assert "baseline (the unchanged code): score=22.25" in one
    assert (
        f"#{first.number} coder (you) kept score=16 (NEW BEST, -6.25 vs the best then, "
        "-28.1% vs baseline): move X to 3"
    ) in two
    assert "X = 3" in two and "X = 0.5" not in two

    # every call is metered against the trial it was made for
    store = open_store(store_url(lab))
    try:
        attempts = store.attempts("toy", agent="coder")
    finally:
        store.close()
    assert [a["trial"] for a in attempts] == [str(first.number), str(second.number)]


def test_a_malformed_reply_is_answered_with_the_error_and_the_fixed_one_is_used(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(Reply(text=PROSE), Reply(text=GOOD))
    lab = _lab(tmp_path, fake)
    _run(lab, 1)

    (trial,) = _trials(lab)
    assert (trial.status, trial.description, trial.proposal["replies"]) == (
        TrialStatus.kept, "move X to 3", 2,
    )  # fmt: skip
    _, asked_again = _asks(fake)
    assert asked_again[-2] == {"role": "assistant", "content": PROSE}
    feedback = asked_again[-1]["content"]
    assert "no `DESCRIPTION: <one line>` line" in feedback and "no edit blocks" in feedback


def test_an_edit_of_a_protected_file_is_refused(tmp_path: Path, fake: FakeProvider) -> None:
    cheat = render("the judge is wrong", [Edit("judge.py", "# the protected evaluator\n", "")])
    fake.enqueue(Reply(text=cheat), Reply(text=GOOD))
    lab = _lab(tmp_path, fake)
    _run(lab, 1)

    (trial,) = _trials(lab)
    assert trial.status is TrialStatus.kept and "judge.py" not in (trial.diff or "")
    feedback = _asks(fake)[1][-1]["content"]
    assert "judge.py is protected and not editable" in feedback
    assert "editable files match: exp.py" in feedback


def test_three_unusable_replies_crash_the_trial_with_every_reply_kept(
    tmp_path: Path, fake: FakeProvider
) -> None:
    not_found = render("tune X", [Edit("exp.py", "X = 0.7\n", "X = 3\n")])
    elsewhere = render("tune the config", [Edit("overnight.toml", "[lab]\n", "[lab]\n")])
    replies = [PROSE, not_found, elsewhere]
    assert len(replies) == MAX_REASKS + 1
    fake.enqueue(*(Reply(text=r) for r in replies))
    lab = _lab(tmp_path, fake)
    _run(lab, 1)

    (trial,) = _trials(lab)
    assert trial.status is TrialStatus.crashed
    assert trial.proposal["replies"] == replies
    assert trial.reason is not None and "no usable reply in 3 tries" in trial.reason
    assert "overnight.toml is not editable" in trial.reason
    conversations = _asks(fake)
    assert len(conversations) == 3
    # the re-ask names what is wrong and shows what the file really holds
    assert "SEARCH not found in exp.py" in conversations[2][-1]["content"]
    assert "2| X = 0.5" in conversations[2][-1]["content"]
    assert (lab / "exp.py").read_text().count("X = 0.5") == 1


# --- the proposer against a gateway in this process ---------------------------------------


def _setup(tmp_path: Path, url: str, key: str, agent: str = "alice") -> ProposerSetup:
    config = OrgConfig.model_validate(
        {
            "lab": {"name": "toy", "editable": ["exp.py"], "run": "true", "metric": "score"},
            "agents": [{"name": agent, "runtime": "llm", "model": "gpt"}],
        }
    )
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    (worktree / "exp.py").write_text("X = 0.5\nY = 5\n")
    return ProposerSetup(
        config=config,
        run_id="r1",
        agent=agent,
        store_url=f"sqlite:///{tmp_path / 'overnight.db'}",
        program="Make score small.",
        root=worktree,
        gateway_url=url,
        key_file=key_file,
    )


def _trial(number: int, **kw: Any) -> Trial:
    fields: dict[str, Any] = {
        "id": number, "run_id": "r1", "number": number, "agent": "alice",
        "status": TrialStatus.proposed, "parent_commit": "0" * 40, "description": "",
        "proposal": {}, "created_at": 0.0, "updated_at": 0.0,
    } | kw  # fmt: skip
    return Trial(**fields)


def test_llm_is_a_registered_runtime() -> None:
    assert "llm" in available()


def test_a_route_in_brownout_or_a_spent_budget_is_unavailable_not_a_crash(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.fault("status", code=529, times=None)
    with gateway([upstream("o1", "openai", fake.url, "main")], {"gpt": ["o1/gpt-fake-1"]}) as env:
        proposer = create("llm", _setup(tmp_path, env.url, env.key))
        assert isinstance(proposer, LlmProposer)
        try:
            with pytest.raises(ProposerUnavailable) as down:
                proposer.propose(tmp_path / "wt", _trial(2))
        finally:
            proposer.close()
    assert down.value.brownout and down.value.retry_after is not None
    assert "'gpt' is down" in str(down.value)

    spent = Budgets(BudgetsConfig(agents={"alice": LimitConfig(total_usd=0)}))
    with gateway(
        [upstream("o1", "openai", fake.url, "main")], {"gpt": ["o1/gpt-fake-1"]}, ledger=spent
    ) as env:
        proposer = LlmProposer(_setup(tmp_path, env.url, env.key))
        try:
            with pytest.raises(ProposerUnavailable) as broke:
                proposer.propose(tmp_path / "wt", _trial(3))
        finally:
            proposer.close()
    assert not broke.value.brownout and "budget" in str(broke.value)


def test_a_big_file_is_cut_and_a_long_history_keeps_the_recent_trials_and_the_best(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(Reply(text=GOOD))
    store = open_store(f"sqlite:///{tmp_path / 'overnight.db'}")
    try:
        store.create_run("r1", "toy", "0" * 40, {}, {})
        store.put_agent(AgentRecord("r1", "alice", "llm", "b", "wt", "0" * 40))
        best = store.add_trial("r1", "alice", "0" * 40, "the best idea", {})
        store.update_trial(best.id, TrialStatus.applied, candidate_commit="1" * 40)
        for status in (TrialStatus.checked, TrialStatus.running):
            store.update_trial(best.id, status)
        store.update_trial(best.id, TrialStatus.measured, metric=1.5)
        store.update_trial(best.id, TrialStatus.kept)
        for n in range(150):
            t = store.add_trial("r1", "alice", "0" * 40, f"idea {n}", {})
            store.update_trial(t.id, TrialStatus.crashed, reason=f"crash {n}\ntraceback")
    finally:
        store.close()
    with gateway([upstream("o1", "openai", fake.url, "main")], {"gpt": ["o1/gpt-fake-1"]}) as env:
        setup = _setup(tmp_path, env.url, env.key)
        (tmp_path / "wt" / "exp.py").write_text("X = 0.5\nY = 5\n" + "# padding\n" * 5000)
        proposer = LlmProposer(setup)
        try:
            proposal = proposer.propose(tmp_path / "wt", _trial(152))
        finally:
            proposer.close()
    assert proposal.description == "move X to 3"
    prompt = _asks(fake)[0][-1]["content"]
    assert "[truncated: showing the first 23994 of 50014 characters" in prompt
    # the notebook: the best first, then the newest trials, the older ones counted
    assert "best so far: score=1.5 by alice (you) in #1: the best idea" in prompt
    assert "#1 alice (you) kept score=1.5 (NEW BEST): the best idea" in prompt
    assert "... 71 older trials not shown (71 crashed)" in prompt
    assert prompt.index("#151 alice (you) crashed: idea 149 [crash 149]") < prompt.index("#73 ")
    assert "idea 70 " not in prompt and "#73 alice (you) crashed: idea 71 [crash 71]" in prompt
    assert "traceback" not in prompt  # a reason is cut to its first line


def test_a_requeued_trial_is_proposed_again_once_without_asking_the_model(
    tmp_path: Path,
) -> None:
    # nothing listens on port 9: any call to the model would fail loudly
    proposer = LlmProposer(_setup(tmp_path, "http://127.0.0.1:9", "ovn-key"))
    edits = [{"path": "exp.py", "search": "X = 0.5\n", "replace": "X = 3\n"}]
    interrupted = _trial(
        4,
        status=TrialStatus.interrupted,
        description="move X to 3",
        proposal={"edits": edits, "model": "gpt", "replies": 1},
    )
    try:
        proposer.resume([], [interrupted])
        proposer.resume([], [interrupted])  # told twice, still proposed once
        again = proposer.propose(tmp_path / "wt", _trial(5))
        assert (again.requeued_from, again.description) == (4, "move X to 3")
        assert again.data["edits"] == edits
        again.apply(tmp_path / "wt")
        assert (tmp_path / "wt" / "exp.py").read_text() == "X = 3\nY = 5\n"
        with pytest.raises(ProposerUnavailable, match="did not answer"):
            proposer.propose(tmp_path / "wt", _trial(6))
    finally:
        proposer.close()


# --- the edit blocks ---------------------------------------------------------------------


def _files(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(text.encode())
    return tmp_path


def test_fences_prose_and_decorated_paths_are_accepted() -> None:
    reply = (
        "Sure! Here is the plan.\n\n**DESCRIPTION:** two knobs and a helper\n\n"
        "**exp.py**\n```python\n<<<<<<< SEARCH\nX = 0.5\n=======\nX = 2\n>>>>>>> REPLACE\n"
        "<<<<<<< SEARCH\nY = 5\n=======\nY = 1\n>>>>>>> REPLACE\n```\n\n"
        "And a new file:\n\n`lib/helper.py`\n```python\n<<<<<<< SEARCH\n=======\n"
        "def f():\n    return 1\n>>>>>>> REPLACE\n```\nThat should do it."
    )
    description, edits = parse(reply)
    assert description == "two knobs and a helper"
    assert edits == [
        Edit("exp.py", "X = 0.5\n", "X = 2\n"),
        Edit("exp.py", "Y = 5\n", "Y = 1\n"),  # a block straight after another: same file
        Edit("lib/helper.py", "", "def f():\n    return 1\n"),
    ]


def test_edits_apply_in_order_across_files_and_create_new_ones(tmp_path: Path) -> None:
    root = _files(tmp_path, **{"exp.py": "X = 0.5\nY = 5\n", "lib/a.py": "A = 1\n"})
    edits = [
        Edit("exp.py", "X = 0.5\n", "X = 2\n"),
        Edit("exp.py", "X = 2\nY = 5\n", "X = 2\nY = 1\n"),  # sees the first edit's result
        Edit("lib/a.py", "A = 1\n", "A = 2\n"),
        Edit("lib/new.py", "", "B = 1\n"),
    ]
    texts = apply(root, edits, ["exp.py", "lib/*.py"], [])
    assert texts == {
        "exp.py": "X = 2\nY = 1\n",
        "lib/a.py": "A = 2\n",
        "lib/new.py": "B = 1\n",
    }
    assert (root / "exp.py").read_text() == "X = 0.5\nY = 5\n"  # nothing written yet


def test_not_found_and_ambiguous_say_where_to_look(tmp_path: Path) -> None:
    root = _files(tmp_path, **{"exp.py": "lr = 0.1\nMAX_LR = 0.1\nsteps = 10\nsteps = 10\n"})
    with pytest.raises(EditError) as caught:
        apply(
            root,
            [Edit("exp.py", "lr = 0.2\n", "lr = 0.3\n"), Edit("exp.py", "steps = 10\n", "")],
            ["exp.py"],
            [],
        )
    not_found, ambiguous = caught.value.problems
    assert not_found.startswith("block 1 (exp.py): SEARCH not found in exp.py")
    assert "    1| lr = 0.1" in not_found
    assert ambiguous == (
        "block 2 (exp.py): SEARCH found 2 times in exp.py (at lines 3, 4); "
        "include more of the surrounding lines so it matches exactly once"
    )


def test_whole_lines_match_line_endings_are_kept_and_trailing_spaces_forgiven(
    tmp_path: Path,
) -> None:
    root = _files(tmp_path, **{"exp.py": "MAX = 0.5\r\nX = 0.5  \r\nY = 5"})
    # "X = 0.5" also ends the line "MAX = 0.5": only whole lines count
    texts = apply(root, [Edit("exp.py", "X = 0.5\n", "X = 3\n")], ["exp.py"], [])
    assert texts["exp.py"] == "MAX = 0.5\r\nX = 3\r\nY = 5"
    texts = apply(root, [Edit("exp.py", "Y = 5\n", "Y = 1\nZ = 2\n")], ["exp.py"], [])
    assert texts["exp.py"] == "MAX = 0.5\r\nX = 0.5  \r\nY = 1\r\nZ = 2"


def test_paths_outside_the_editable_globs_are_refused(tmp_path: Path) -> None:
    root = _files(tmp_path, **{"exp.py": "X = 1\n", "judge.py": "J = 1\n"})
    edits = [
        Edit("judge.py", "J = 1\n", "J = 0\n"),
        Edit("other.py", "", "x\n"),
        Edit("../exp.py", "", "x\n"),
        Edit("exp.py", "", "X = 2\n"),  # an empty SEARCH only creates
    ]
    with pytest.raises(EditError) as caught:
        apply(root, edits, ["exp.py"], ["judge.py"])
    protected, other, outside, exists = caught.value.problems
    assert protected.startswith("block 1: judge.py is protected and not editable")
    assert other == (
        "block 2: other.py is not editable; editable files match: exp.py (existing: exp.py)"
    )
    assert "not a path inside the lab" in outside
    assert "SEARCH is empty, which creates a new file, but exp.py exists" in exists


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (PROSE, "no `DESCRIPTION: <one line>` line first in the reply"),
        ("DESCRIPTION: x", "no edit blocks"),
        ("DESCRIPTION: x\nexp.py\n<<<<<<< SEARCH\na\n>>>>>>> REPLACE", "no `=======` line"),
        ("DESCRIPTION: x\nexp.py\n<<<<<<< SEARCH\na\n=======\nb\n", "not closed by"),
        ("DESCRIPTION: x\nThe edit:\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE", "alone"),
        ("DESCRIPTION:\nexp.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE", "is empty"),
    ],
)
def test_malformed_replies_say_what_is_wrong(reply: str, problem: str) -> None:
    with pytest.raises(EditError) as caught:
        parse(reply)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


_MARKER = re.compile(r"^\s*(<{5,9}\s*SEARCH|={7}|>{5,9}\s*REPLACE)\s*$")
_line = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"])).filter(
    lambda s: not _MARKER.match(s)
)


@given(
    lines=st.lists(_line, min_size=1, max_size=12, unique=True),
    replacement=st.lists(_line, max_size=5),
    data=st.data(),
    final_newline=st.booleans(),
)
def test_a_rendered_edit_parses_back_and_splices_exactly_its_lines(
    lines: list[str], replacement: list[str], data: st.DataObject, final_newline: bool
) -> None:
    start = data.draw(st.integers(0, len(lines) - 1))
    end = data.draw(st.integers(start + 1, len(lines)))
    search = lines[start:end]
    assume(any(s.strip() for s in search))
    # an empty last line without a final newline is no line at all ("a\n" is ["a"])
    assume(final_newline or lines[-1] != "")
    edit = Edit("exp.py", "".join(s + "\n" for s in search), "".join(r + "\n" for r in replacement))
    description, edits = parse(render("a change", [edit]))
    assert (description, edits) == ("a change", [edit])
    with tempfile.TemporaryDirectory() as folder:
        text = "\n".join(lines) + ("\n" if final_newline else "")
        root = _files(Path(folder), **{"exp.py": text})
        new = apply(root, edits, ["exp.py"], [])["exp.py"]
    spliced = lines[:start] + replacement + lines[end:]
    assert new == "\n".join(spliced) + ("\n" if final_newline and spliced else "")


def test_a_rate_limited_route_makes_the_agent_wait_as_told(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.fault("status", code=429, retry_after=2)  # the next request only
    fake.enqueue(Reply(text=GOOD))
    lab = _lab(tmp_path, fake)
    _run(lab, 1)
    asks = [r for r in fake.requests if r["path"] == "/v1/chat/completions"]
    assert len(asks) == 2  # no hammering: one refused call, then the one that worked
    assert asks[1]["at"] - asks[0]["at"] >= 2.0
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        waits = [
            e.payload
            for e in store.events(run.id, limit=10000)
            if e.kind == "agent.state" and e.payload["state"] == "waiting"
        ]
    finally:
        store.close()
    assert len(waits) == 1 and "rate" in str(waits[0]["reason"]).lower()
    (kept,) = [t for t in _trials(lab) if t.status is TrialStatus.kept]
    assert kept.description == "move X to 3"
