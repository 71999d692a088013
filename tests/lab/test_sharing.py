"""Sharing: an agent trailing the lab's best for `patience` of its trials moves there.

Through `overnight run` on real git labs: two optuna agents on a lab with two basins
(a knob picks the basin; one is far better), and a real Claude Code agent (against a
scripted fake provider) beside an optuna agent, moved at its `overnight try` and told.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from overnight.records import Event, Trial
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from tests.helpers.agents import claude_lab
from tests.helpers.labs import TOY_KNOBS, git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started, stop
from tests.helpers.store import latest_events, latest_trials

BASINS = """\
import random
BASIN = "a"
X = 0.5
if BASIN == "a":
    score = 1.0 + (X - 0.2) ** 2
else:
    score = 0.1 + (X - 0.8) ** 2
print(f"score: {score + random.gauss(0, NOISE)}")
"""

BASINS_CONFIG = """\
[lab]
name = "basins"
editable = ["exp.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"
grace = "5s"
patience = 2
{share}

[[knobs]]
name = "BASIN"
file = "exp.py"
choices = ["a", "b"]

[[knobs]]
name = "X"
file = "exp.py"
low = 0
high = 1

[[agents]]
name = "t"
count = 2
"""


def basins(tmp_path: Path, share: str = "", noise: float = 0.0) -> Path:
    """Two basins, one far better; a score measured exactly, or with gaussian `noise`."""
    config = BASINS_CONFIG.format(python=sys.executable, share=share)
    script = BASINS.replace("NOISE", repr(noise))
    return make_lab(tmp_path / "lab", script=script, config=config)


def ledger(lab: Path, name: str = "basins") -> tuple[list[Trial], list[Event]]:
    return latest_trials(lab, name), latest_events(lab, name=name)


def after(trial: Trial) -> str | None:
    """Where a trial left its agent's ratchet: its commit if kept, else its parent."""
    return trial.candidate_commit if trial.status.value == "kept" else trial.parent_commit


def studies(lab: Path, trials: list[Trial]) -> dict[str, list[float]]:
    """The lab's Optuna studies, each with the metrics it heard, against the ledger: by
    agent (a study of its own) or "shared"; the baseline's is dropped."""
    run_id, url = trials[0].run_id, store_url(lab)
    baseline = next(t.metric for t in trials if t.agent == "baseline")
    heard: dict[str, list[float]] = {}
    for name in optuna.get_all_study_names(url):
        values = sorted(t.value for t in optuna.load_study(study_name=name, storage=url).trials
                        if t.value is not None)  # fmt: skip
        values.remove(baseline)  # each study is seeded with the baseline
        heard[name.removeprefix(f"overnight-{run_id}").removeprefix("-") or "shared"] = values
    return heard


def measured(trials: list[Trial], agents: tuple[str, ...]) -> list[float]:
    return sorted(t.metric for t in trials
                  if t.agent in agents and t.metric is not None and t.status.value in ("kept", "discarded"))  # fmt: skip


def spaced(adoptions: list[Event], trials: list[Trial], patience: int) -> None:
    """An agent moves again only after `patience` more trials of its own behind the best."""
    for first, then in itertools.pairwise(adoptions):
        if first.agent == then.agent:
            between = [
                t for t in trials
                if t.agent == first.agent and t.status.final and first.at < (t.finished_at or 0) <= then.at
            ]  # fmt: skip
            assert len(between) >= patience, (first, then)


@pytest.mark.parametrize("noise", [0.0, 0.0002], ids=["exact", "noisy"])
def test_a_trailing_optuna_agent_moves_to_the_labs_best_and_builds_on_it(
    tmp_path: Path, noise: float
) -> None:
    lab = basins(tmp_path, noise=noise)  # no `share`: two agents share by default
    done = run_cli("run", str(lab), "--trials", "30", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    trials, events = ledger(lab)
    # the run measured its noise (min_delta unset, a short budget): σ 0, or about `noise`
    sigma = json.loads(run_cli("status", str(lab), "--json").stdout)["noise_floor"]["sigma"]
    assert (sigma > 0) == (noise > 0), sigma
    # one Optuna study heard every trial of both agents: what one learns, both do
    assert studies(lab, trials) == {"shared": measured(trials, ("t-1", "t-2"))}
    adoptions = [e for e in events if e.kind == "agent.adopted"]
    assert adoptions, done.stdout
    by_number = {t.number: t for t in trials}
    header, *lines = run_cli("ledger", str(lab), "--tsv").stdout.splitlines()
    rows = [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]
    parents = {int(r["trial"]): r["parent"] for r in rows}  # the ledger's parent column
    for event in adoptions:
        p, mover = event.payload, event.agent
        best = by_number[p["to_trial"]]
        # it moved to another agent's kept trial, better than its own best
        assert best.status.value == "kept" and best.agent not in (mover, "baseline")
        assert (p["to_commit"], p["to_metric"], p["to_agent"]) == (
            best.candidate_commit, best.metric, best.agent,
        )  # fmt: skip
        assert p["from_metric"] > p["to_metric"] and p["trailed"] >= 2
        # ... after `patience` (2) trials of its own, the last of which left it where it was
        own = [t for t in trials if t.agent == mover and t.status.final]
        before = [t for t in own if (t.finished_at or 0) <= event.at]
        assert len(before) >= 2 and after(before[-1]) == p["from_commit"]
        # its next trial starts at the adopted commit; on a noisy metric it explores near
        # it, on an exact one the shared study (which knows the best) draws it
        later = [t for t in own if t.created_at > event.at]
        if later:
            assert later[0].parent_commit == p["to_commit"]
            assert parents[later[0].number] == p["to_commit"][:7]
            exploring = f"exploring near trial {best.number}" in later[0].description
            assert exploring == (noise > 0), later[0].description
    if noise == 0:
        assert not [t for t in trials if "explore_of" in t.proposal]
    for agent in ("t-1", "t-2"):
        spaced([e for e in adoptions if e.agent == agent], trials, 2)
    # an explore step never re-measures a point the lab had measured when it was proposed
    for step in (t for t in trials if "explore_of" in t.proposal):
        earlier = [
            t.proposal["params"] for t in trials
            if "params" in t.proposal and (t.finished_at or step.created_at) < step.created_at
        ]  # fmt: skip
        assert step.proposal["params"] not in earlier, step
    # the branch of the agent that moved last holds the adopted commit, or keeps built on it
    last = adoptions[-1]
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    branch = next(a["branch"] for a in status["agents"] if a["name"] == last.agent)
    git(lab, "merge-base", "--is-ancestor", last.payload["to_commit"], branch)  # or it raises
    # and the lab's best branch is the finder's, not that of an agent that moved to it
    assert status["best"]["branch"].endswith("/" + status["best"]["agent"])


def test_with_share_none_each_agent_ratchets_alone(tmp_path: Path) -> None:
    lab = basins(tmp_path, share='share = "none"')
    done = run_cli("run", str(lab), "--trials", "20", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    trials, events = ledger(lab)
    assert not [e for e in events if e.kind == "agent.adopted"]
    # each agent has an Optuna study of its own, which never heard of the other's trials
    assert studies(lab, trials) == {a: measured(trials, (a,)) for a in ("t-1", "t-2")}
    base = next(t.candidate_commit for t in trials if t.agent == "baseline")
    for agent in ("t-1", "t-2"):
        own = {t.candidate_commit for t in trials if t.agent == agent and t.status.value == "kept"}
        # every trial starts from the run's start or from one of the agent's own keeps
        for t in trials:
            if t.agent == agent:
                assert t.parent_commit in own | {base}, t


def test_a_run_resumed_sharing_goes_on_in_one_study_that_heard_all(tmp_path: Path) -> None:
    lab = basins(tmp_path, share='share = "none"')
    assert run_cli("run", str(lab), "--trials", "6", "--no-ui").returncode == 0
    config = lab / "overnight.toml"
    config.write_text(config.read_text().replace('share = "none"', 'share = "best"'))
    git(lab, "commit", "-qam", "share")
    done = run_cli("run", str(lab), "--trials", "4", "--no-ui")
    assert done.returncode == 0 and "resuming run" in done.stdout, done.stdout + done.stderr
    trials, _ = ledger(lab)
    heard = studies(lab, trials)
    # the agents' own studies stay as they were; the shared one, new, was told all ten
    assert set(heard) == {"t-1", "t-2", "shared"}
    assert heard["shared"] == measured(trials, ("t-1", "t-2")) and len(heard["shared"]) == 10


def bad_try(n: int) -> Reply:
    """A change that makes the score far worse than anything the tuner keeps."""
    command = f"sed -i 's/^X = .*/X = -5/; s/^Y = .*/Y = -5/' exp.py && overnight try 'far {n}'"
    return Reply(tool_calls=[ToolCall("Bash", {"command": command, "description": "try"})])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_claude_code_agent_moves_at_its_overnight_try_and_hears_of_it(tmp_path: Path) -> None:
    """Its worktree is never reset under it mid-edit: the move happens while it waits for
    `overnight try`, whose output says so, and its next message says so again."""
    script = [bad_try(1), bad_try(2), bad_try(3), bad_try(4), Reply(text="Done for now.")]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab, env = claude_lab(
            tmp_path,
            fake,
            lab={"patience": 2},
            knobs=TOY_KNOBS,
            others=[{"name": "tuner"}],
            idle_after="1s",
            nudge=None,
        )
        with started(
            [*OVERNIGHT, "run", str(lab), "--no-ui"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            wait_until(lambda: moved(lab), timeout=120)
            wait_until(lambda: heard_in_a_prompt(fake), timeout=90)
            out, err = stop(proc)
    trials, events = ledger(lab, "toy")
    (adoption, *more) = [e for e in events if e.kind == "agent.adopted"]
    spaced([adoption, *more], trials, 2)
    assert adoption.agent == "claude" and adoption.payload["to_agent"] == "tuner", out + err
    # it moved right after one of its own trials, while `overnight try` waited
    tries = [t for t in trials if t.agent == "claude"]
    assert all(t.proposal.get("via") == "overnight try" for t in tries)
    assert [t for t in tries if (t.finished_at or 0) <= adoption.at]
    later = [t for t in tries if t.created_at > adoption.at]
    if later:
        assert later[0].parent_commit == adoption.payload["to_commit"]
    # the tool result of that `overnight try` says so ...
    results = json.dumps([r["body"]["messages"] for r in fake.requests])
    assert f"trial {adoption.payload['to_trial']} by tuner" in results


def moved(lab: Path) -> bool:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        return run is not None and store.last_event(run.id, ["agent.adopted"]) is not None
    finally:
        store.close()


def heard_in_a_prompt(fake: FakeProvider) -> bool:
    """... and the agent's next message (the nudge after it went idle) says it again."""
    for request in fake.requests:
        messages = request["body"]["messages"]
        last = messages[-1] if messages else {}
        content = last.get("content")
        texts = [content] if isinstance(content, str) else [
            str(c.get("text", "")) for c in content or [] if c.get("type") == "text"
        ]  # fmt: skip
        if any("moved to the lab's best" in t for t in texts):
            return True
    return False
