"""External CLI agents in terminal sessions: the real Claude Code, driven by `overnight run`.

Nothing is mocked: `overnight run` starts the agent (`overnight agent`) in a tmux
session; the agent runs the real `claude` CLI against the lab's gateway, whose
upstream is a scripted fake Anthropic server; Claude Code's Bash tool edits the
editable file and submits it with `overnight try`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from tests.helpers.agents import (
    AIDER_EDIT,
    SCRIPT,
    TRY,
    claude_lab,
    openai_cli_lab,
    running,
    states,
)
from tests.helpers.labs import claude_agent, fake_anthropic, git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, start, started, stop
from tests.helpers.store import latest_events

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def agent_pids(worktree: Path) -> list[int]:
    """The `overnight agent` processes running for this worktree."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and str(worktree).encode() in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def lab_run(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, FakeProvider]]]:
    """Starts `overnight run` on a Claude Code lab; when the test ends, the run is stopped,
    then its fake provider."""
    runs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as fakes:

        def run(idle_after: str = "1h") -> tuple[Path, FakeProvider]:
            fake = fakes.enter_context(
                FakeProvider("anthropic", script=SCRIPT, mode="conversation")
            )
            lab, env = claude_lab(tmp_path, fake, idle_after=idle_after)
            runs.append(
                start(
                    [*OVERNIGHT, "run", str(lab)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            return lab, fake

        try:
            yield run
        finally:
            for proc in runs:
                stop(proc)


def test_claude_code_submits_a_trial_goes_idle_and_is_restarted_and_resumed(
    lab_run: Callable[..., tuple[Path, FakeProvider]],
) -> None:
    lab, fake = lab_run()
    # the first turn: Claude Code edits exp.py and runs `overnight try`, which keeps it
    wait_until(lambda: "idle" in states(lab), timeout=90)
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X=3, Y=1: the optimum" in ledger and "keep" in ledger
    assert states(lab)[:2] == ["working", "idle"]
    requests = len(fake.requests)
    assert requests >= 2 and all(r["headers"].get("x-api-key") == "sk-fake" for r in fake.requests)

    # kill -9 the agent process: the supervisor restarts it, and it resumes the conversation
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    worktree = lab / ".overnight" / "worktrees" / status["run"] / "claude"
    (pid,) = agent_pids(worktree)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: latest_events(lab, "agent.restarted") != [], timeout=30)
    wait_until(lambda: states(lab)[-1] == "idle" and len(fake.requests) > requests, timeout=90)
    assert "crashed" in states(lab)
    resumed = fake.requests[-1]["body"]
    text = str(resumed["messages"])
    assert "overnight restarted you" in text
    assert "X=3, Y=1: the optimum" in text  # the earlier tool call is still in the conversation


UMASK_SCRIPT = """\
import os
X = 0.5
Y = 5
with open("out.txt", "w") as fh:
    fh.write("the experiment's own result\\n")
print(f"out.txt mode {os.stat('out.txt').st_mode & 0o777:o}")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


def test_the_agents_cli_and_its_experiments_keep_the_users_umask(tmp_path: Path) -> None:
    """overnight's own processes write private state (umask 077); the CLI it drives (through
    tmux and `overnight agent`) and the experiment that CLI's `overnight try` starts get
    the umask the user started `overnight run` with."""
    script = [
        Reply(tool_calls=[ToolCall("Bash", {"command": f"umask && {TRY}", "description": "go"})]),
        Reply(text="Submitted."),
    ]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab, env = claude_lab(tmp_path, fake, script=UMASK_SCRIPT)
        with running(lab, env, umask=0o027):
            wait_until(lambda: "idle" in states(lab), timeout=90)
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X=3, Y=1: the optimum" in ledger and "keep" in ledger
    answered = json.dumps([r["body"]["messages"] for r in fake.requests])
    assert '"0027\\n' in answered, "Claude Code's Bash tool ran with the user's umask"
    logs = sorted((lab / ".overnight" / "logs").glob("*/trial-*.log"))
    assert len(logs) == 2  # the baseline, and the trial the agent's `overnight try` ran
    for log in logs:
        assert "out.txt mode 640" in log.read_text()
        assert log.stat().st_mode & 0o777 == 0o600


CODEX_SCRIPT = [
    Reply(tool_calls=[ToolCall("exec_command", {"cmd": TRY})]),
    Reply(text="Submitted: it was kept."),
]


def test_codex_submits_a_trial_through_the_responses_api(tmp_path: Path) -> None:
    with FakeProvider("openai", script=CODEX_SCRIPT, mode="conversation") as fake:
        lab, env = openai_cli_lab(tmp_path, fake)
        with running(lab, env):
            wait_until(lambda: "idle" in states(lab), timeout=90)
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X=3, Y=1: the optimum" in ledger and "keep" in ledger
    assert states(lab) == ["working", "idle", "paused"]
    # Codex spoke Responses to the gateway, which a Chat Completions server answered
    assert {r["path"] for r in fake.requests} == {"/v1/chat/completions"}
    store = open_store(store_url(lab))
    (agent,) = store.agents(latest_events(lab)[0].run_id)
    store.close()
    assert agent.session  # Codex's thread id, to resume the conversation after a restart


def test_a_curious_codex_agent_runs_in_a_read_only_sandbox(tmp_path: Path) -> None:
    """Autonomy `curious` means no writes: Codex's own sandbox refuses the agent's write,
    and the refusal goes back to the model."""
    script = [
        Reply(tool_calls=[ToolCall("exec_command", {"cmd": "echo 'X = 3' >> exp.py"})]),
        Reply(text="I could not write."),
    ]
    with FakeProvider("openai", script=script, mode="conversation") as fake:
        lab, env = openai_cli_lab(tmp_path, fake, autonomy="curious")
        with running(lab, env):
            wait_until(lambda: "idle" in states(lab), timeout=90)
    (worktree,) = (lab / ".overnight" / "worktrees").glob("*/codex")
    assert (worktree / "exp.py").read_text() == (lab / "exp.py").read_text()
    tool_results = [
        m for r in fake.requests for m in r["body"]["messages"] if m.get("role") == "tool"
    ]
    assert tool_results and "Read-only file system" in str(tool_results[-1]["content"])


def test_a_killed_overnight_run_leaves_the_agent_working_and_the_next_one_reattaches(
    tmp_path: Path,
) -> None:
    with FakeProvider("anthropic", script=SCRIPT, mode="conversation") as fake:
        lab, env = claude_lab(tmp_path, fake)
        with started(
            [*OVERNIGHT, "run", str(lab)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as first:
            wait_until(lambda: "idle" in states(lab), timeout=90)
            status = json.loads(run_cli("status", str(lab), "--json").stdout)
            worktree = lab / ".overnight" / "worktrees" / status["run"] / "claude"
            (pid,) = agent_pids(worktree)
            first.kill()  # SIGKILL: no clean-up at all
            first.communicate()
        (worktree / "notes.txt").write_text("unsubmitted work in progress\n")
        assert agent_pids(worktree) == [pid]  # the agent outlived it, in its tmux session
        with running(lab, env):
            wait_until(lambda: latest_events(lab, "agent.reattached") != [], timeout=60)
            assert agent_pids(worktree) == [pid]  # the same process, not a new one
            assert latest_events(lab, "agent.started")[1:] == []
            assert (worktree / "notes.txt").exists()  # its worktree was left alone
        wait_until(lambda: agent_pids(worktree) == [], timeout=30)  # Ctrl-C stops it


def test_codex_pauses_through_a_brownout_and_resumes_after_it(tmp_path: Path) -> None:
    breaker = {"failures": 1, "cooldown": "1s", "max_cooldown": "1s"}
    with FakeProvider("openai", script=CODEX_SCRIPT, mode="conversation") as fake:
        lab, env = openai_cli_lab(tmp_path, fake, idle_after="1s", gateway={"breaker": breaker})
        with running(lab, env):
            wait_until(lambda: "idle" in states(lab), timeout=90)
            fake.fault("status", code=503, times=None)
            wait_until(lambda: "paused" in states(lab), timeout=90)
            paused_at = len(fake.requests)
            fake.clear_faults()
            wait_until(lambda: latest_events(lab, "agent.recovered") != [], timeout=60)
            # the agent goes on: a new turn reaches the provider after the recovery
            wait_until(lambda: states(lab)[-1] == "working", timeout=60)
            wait_until(lambda: len(fake.requests) > paused_at + 1, timeout=60)
    (brownout,) = latest_events(lab, "agent.brownout")
    (recovered,) = latest_events(lab, "agent.recovered")
    assert brownout.payload["mode"] == "pause" and recovered.payload["trials"] == []


def test_aider_edits_and_overnight_submits_its_change(tmp_path: Path) -> None:
    """aider does not run shell commands unattended: the agent process submits each turn's
    change with `overnight try` (aider's DESCRIPTION line as the description) and tells the
    next turn the result."""
    with FakeProvider("openai", script=[Reply(text=AIDER_EDIT)]) as fake:
        lab, env = openai_cli_lab(tmp_path, fake, "aider")
        with running(lab, env):
            wait_until(lambda: "idle" in states(lab), timeout=120)
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X to its optimum, 3" in ledger and "keep" in ledger
    followup = [r for r in fake.requests if r["path"] == "/v1/chat/completions"][-1]
    assert "KEPT" in json.dumps(followup["body"]["messages"])  # the next turn heard the result


def test_an_idle_agent_is_nudged(lab_run: Callable[..., tuple[Path, FakeProvider]]) -> None:
    lab, fake = lab_run(idle_after="1s")
    wait_until(lambda: latest_events(lab, "agent.nudged") != [], timeout=90)
    wait_until(
        lambda: any("NUDGE-7" in str(r["body"]["messages"]) for r in fake.requests), timeout=60
    )
    (nudge, *_) = latest_events(lab, "agent.nudged")
    assert nudge.agent == "claude" and nudge.payload["message"] == "Keep going: NUDGE-7"


def test_a_missing_cli_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        knobs=(),
        agents=[claude_agent()],
        gateway=fake_anthropic("http://127.0.0.1:9"),
    )
    env = {**os.environ, "OVERNIGHT_CLAUDE": str(tmp_path / "nowhere" / "claude"), "FAKE_KEY": "x"}
    result = run_cli("run", str(lab), env=env)
    assert result.returncode == 2
    assert "agents[0].runtime" in result.stderr
    assert "@anthropic-ai/claude-code" in result.stderr and "fix:" in result.stderr
    git(lab, "status")  # the lab is untouched and still a repository
