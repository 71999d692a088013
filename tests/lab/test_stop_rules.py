"""Stop rules (`[lab.stop]`): a run that reached its target, found nothing for a while, or
whose every agent keeps crashing stops by itself and says which rule stopped it.

Each test runs `overnight run` as a subprocess on a toy lab and reads what a user reads:
its output and exit code, `overnight status` (and `--json`), and the recorded events.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from overnight.org import load_org
from overnight.records import Event
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from overnight.web import Access, CommandCenter, Sources, serving
from tests.helpers.agents import claude_lab
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import run_cli
from tests.helpers.store import latest_events

FLAT = """\
X = 0.5
Y = 5
print(f"score: {1.0}")
"""

CRASHY = """\
X = 0.5
Y = 5
if X != 0.5:
    raise SystemExit("diverged")
print(f"score: {X}")
"""


def events(lab: Path) -> list[Event]:
    return latest_events(lab)


def status(lab: Path) -> tuple[str, dict]:
    text = run_cli("status", str(lab)).stdout
    return text, json.loads(run_cli("status", str(lab), "--json").stdout)


def finished(lab: Path) -> int:
    return int(status(lab)[1]["trials"]["total"])


def test_a_run_that_reaches_its_target_stops_and_says_so(tmp_path: Path) -> None:
    # the baseline scores 22.25; anything at or below 15 reaches the target
    lab = make_lab(tmp_path / "lab", lab={"stop": {"target": 15}})
    done = run_cli("run", str(lab), "--trials", "100", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped by target = 15: the lab's best score" in done.stdout
    text, data = status(lab)
    assert data["best"]["metric"] <= 15 and data["trials"]["total"] < 100
    assert data["stopped"]["rule"] == "target" and not data["stopped"]["stopping"]
    assert data["stopped"]["detail"].startswith("target = 15: ")
    assert "stopped by target = 15" in text
    # the rule was recorded before the run acted on it, and named again when it stopped
    kinds = [e.kind for e in events(lab)]
    assert kinds.index("run.stopping") < kinds.index("run.stopped")
    (stopped,) = [e for e in events(lab) if e.kind == "run.stopped"]
    assert stopped.payload["rule"] == "target" and stopped.payload["best"] <= 15

    # run again: the target is reached already, so it stops before any trial
    again = run_cli("run", str(lab), "--trials", "5", "--no-ui")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: 0 trial(s)" in again.stdout and "stopped by target = 15" in again.stdout
    assert finished(lab) == data["trials"]["total"]


def test_a_plateau_of_trials_stops_the_run(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=FLAT, lab={"stop": {"plateau": "4 trials"}})
    done = run_cli("run", str(lab), "--trials", "50", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'stopped by plateau = "4 trials": no new lab best in 4 trials' in done.stdout
    assert finished(lab) == 4  # one agent: it stops right after the fourth
    text, data = status(lab)
    assert data["stopped"]["rule"] == "plateau" and "plateau" in text
    # [lab.stop] is not part of the lab's definition: a resumed run takes a new plateau
    config = lab / "overnight.toml"
    config.write_text(config.read_text().replace('"4 trials"', '"2 trials"'))
    git(lab, "commit", "-qam", "a shorter plateau")
    again = run_cli("run", str(lab), "--trials", "50", "--no-ui")
    assert again.returncode == 0, again.stdout + again.stderr
    assert finished(lab) == 6  # counted within each `overnight run`


def test_a_plateau_of_time_stops_the_run(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=FLAT, lab={"stop": {"plateau": "2s"}})
    done = run_cli("run", str(lab), "--trials", "1000", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'stopped by plateau = "2s": no new lab best for ' in done.stdout
    assert 0 < finished(lab) < 1000
    assert status(lab)[1]["stopped"]["rule"] == "plateau"


def test_agents_that_keep_crashing_are_paused_and_then_the_run_stops(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script=CRASHY,
        lab={"stop": {"crash_streak": 3}},
        agents=[{"name": "t", "count": 2}],
    )
    done = run_cli("run", str(lab), "--trials", "50", "--no-ui")
    assert done.returncode == 4, done.stdout + done.stderr  # the run could not go on
    assert "stopped by crash_streak = 3: every agent was paused after 3 crashes" in done.stdout
    text, data = status(lab)
    assert data["stopped"]["rule"] == "crash_streak" and "stopped by crash_streak" in text
    assert data["trials"]["by_status"] == {"crashed": 6, "kept": 1}  # the baseline kept
    for agent in data["agents"]:
        assert (agent["state"], agent["trials"]) == ("paused", 3), agent
    paused = [e for e in events(lab) if e.kind == "agent.paused"]
    assert sorted(e.agent for e in paused) == ["t-1", "t-2"]
    for event in paused:
        assert event.payload["rule"] == "crash_streak" and event.payload["streak"] == 3
        assert "its last 3 trials crashed" in event.payload["reason"]
    states = [e for e in events(lab) if e.kind == "agent.state" and e.payload["state"] == "paused"]
    assert all("crash_streak" in str(e.payload["reason"]) for e in states)


def test_without_stop_rules_the_summary_names_trials(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=FLAT)
    done = run_cli("run", str(lab), "--trials", "2", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped by --trials 2: that many trials are done" in done.stdout
    assert status(lab)[1]["stopped"]["rule"] == "trials"


def test_the_command_center_names_the_rule_that_stopped_the_run(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=FLAT, lab={"stop": {"plateau": "2 trials"}})
    assert run_cli("run", str(lab), "--trials", "9", "--no-ui").returncode == 0
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        sources = Sources(
            store=store, run=run, config=load_org(lab).config, root=lab, state_dir=tmp_path
        )
        with serving(CommandCenter(sources, Access.for_lab(lab))) as served:
            token = served.url.split("token=")[1]
            with httpx.Client(base_url=served.base) as client:
                page = client.get(f"/?token={token}", follow_redirects=True).text
    finally:
        store.close()
    assert "stopped by plateau" in page
    assert "plateau = &#34;2 trials&#34;: no new lab best in 2 trials" in page


def crashing_try(n: int) -> Reply:
    command = f"sed -i 's/^X = .*/X = {n}/' exp.py && overnight try 'X = {n}'"
    return Reply(tool_calls=[ToolCall("Bash", {"command": command, "description": "try"})])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_claude_code_agent_that_keeps_crashing_is_paused_and_the_run_stops(
    tmp_path: Path,
) -> None:
    script = [crashing_try(1), crashing_try(2), crashing_try(3), Reply(text="Done.")]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab, env = claude_lab(
            tmp_path,
            fake,
            script=CRASHY,
            lab={"protected": None, "stop": {"crash_streak": 2}},
            idle_after=None,
            nudge=None,
        )
        done = run_cli("run", str(lab), "--no-ui", env=env, timeout=180)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "stopped by crash_streak = 2: every agent was paused" in done.stdout
    (paused,) = [e for e in events(lab) if e.kind == "agent.paused"]
    assert paused.agent == "claude" and paused.payload["streak"] == 2
    crashed = [t for t in status(lab)[1]["agents"] if t["name"] == "claude"]
    assert crashed[0]["state"] == "paused" and crashed[0]["trials"] >= 2
