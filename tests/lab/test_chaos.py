"""kill -9 `overnight run` at random moments, again and again; nothing may be lost or counted twice."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

from overnight.lab.runner import kill_marked
from overnight.markers import RUN_MARKER, run_mark
from overnight.proposers.optuna import study_name
from overnight.records import Trial
from overnight.sessions import wait_until
from overnight.store import store_exists, store_url
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, start, stop
from tests.helpers.store import (
    lab_store,
    latest_agents,
    latest_events,
    latest_run,
    latest_trials,
)

KILLS = 12
FINAL = {"kept", "discarded", "rejected", "crashed", "timed_out", "interrupted"}
# a run that takes a moment, so kills land in every phase: proposing, committing, running, deciding
SCRIPT = """\
import time
X = 0.5
Y = 5
time.sleep(0.05 + abs(X) / 40)
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


def _event_count(lab: Path) -> int:
    """How many events the lab's runs have written (none before the first run made the store)."""
    if not store_exists(store_url(lab)):
        return 0
    with lab_store(lab) as store:
        return len(store.lab_events("toy", limit=1_000_000))


def _until_written(lab: Path, proc: subprocess.Popen[bytes], target: int) -> None:
    """Until the lab's runs have written `target` events, or `proc` has exited."""
    try:
        wait_until(
            lambda: _event_count(lab) >= target or proc.poll() is not None,
            timeout=60,
            interval=0.005,
        )
    except TimeoutError:
        raise AssertionError("the run made no progress") from None


def test_kill_dash_nine_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("CHAOS_SEED", "overnight"))
    lab = make_lab(
        tmp_path / "lab", script=SCRIPT, lab={"parallel": 2}, agents=[{"name": "t", "count": 2}]
    )
    finished_before: dict[int, tuple[object, ...]] = {}
    for i in range(KILLS):
        seen = _event_count(lab)
        proc = start(
            [*OVERNIGHT, "run", str(lab), "--trials", "50"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # let the run make between 1 and 25 writes, then kill it without warning
        target = seen + rng.randint(1, 25)
        try:
            _until_written(lab, proc, target)
        except BaseException:
            stop(proc, first=signal.SIGKILL)  # and all it started
            raise
        time.sleep(rng.uniform(0, 0.05))  # a random moment: the chaos under test
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        assert proc.stderr is not None
        proc.stderr.close()
        trials = latest_trials(lab)
        numbers = [t.number for t in trials]
        assert numbers == list(range(1, len(numbers) + 1)), f"kill {i}: numbering broke"
        # nothing finished before this kill was lost or changed by it
        now = {t.number: (t.status, t.metric, t.candidate_commit) for t in trials}
        for number, record in finished_before.items():
            assert now[number] == record, f"kill {i}: trial {number} changed after it finished"
        finished_before = {n: r for n, r in now.items() if r[0] in FINAL}

    # a final, uninterrupted run completes and leaves everything consistent
    result = run_cli("run", str(lab), "--trials", "4")
    assert result.returncode == 0, result.stderr
    trials = latest_trials(lab)
    assert all(t.status in FINAL for t in trials)
    assert sum(1 for t in trials if t.status == "interrupted") >= 1, "no kill landed mid-trial"
    by_number = {t.number: t for t in trials}
    retried = [t for t in trials if t.requeued_from is not None]
    for t in retried:
        assert t.requeued_from is not None
        original = by_number[t.requeued_from]
        assert original.status == "interrupted"
        assert t.agent == original.agent, "a re-queued proposal ran for another agent"
        assert t.proposal["params"] == original.proposal["params"]
    assert len({t.requeued_from for t in retried}) == len(retried), "a trial was re-queued twice"
    moves = [e for e in latest_events(lab) if e.kind in ("trial.kept", "agent.adopted")]
    for agent in latest_agents(lab):
        kept = [t for t in trials if t.agent == agent.name and t.status == "kept"]
        # its best is where it last moved: its own latest keep, or the lab's best it adopted
        mine = [m for m in moves if m.agent == agent.name]
        if mine:
            last = mine[-1]
            expected = (
                last.payload["to_commit"]
                if last.kind == "agent.adopted"
                else by_number[last.trial or 0].candidate_commit
            )
            assert agent.best_commit == expected
        if kept:
            metrics = [t.metric or 0.0 for t in kept]
            assert metrics == sorted(metrics, reverse=True)
        assert git(lab, "rev-parse", f"refs/heads/{agent.branch}").strip() == agent.best_commit
        worktree = Path(agent.worktree)
        assert git(worktree, "rev-parse", "HEAD").strip() == agent.best_commit
        assert git(worktree, "status", "--porcelain") == ""
    # the Optuna study heard about every measured trial exactly once
    run_id = trials[0].run_id
    study = optuna.load_study(study_name=study_name(run_id), storage=store_url(lab))
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = [t for t in trials if t.status in ("kept", "discarded") and t.agent != "baseline"]
    proposals = [(t.number, t.proposal) for t in measured]
    asked = [t for t in told if not set(t.user_attrs) & {"overnight_baseline", "overnight_trial"}]
    assert sorted(t.number for t in asked) == sorted(
        p["optuna_trial"] for _n, p in proposals if "optuna_trial" in p
    )
    # an agent that moved to the lab's best explored near it: the study heard of that too
    explored = sorted(
        t.user_attrs["overnight_trial"] for t in told if "overnight_trial" in t.user_attrs
    )
    assert explored == sorted(n for n, p in proposals if "explore_of" in p)
    assert git(lab, "status", "--porcelain") == ""


# t-2's changes wait while the hold file exists, so its trial stays `running` until the
# test lets go; the other agents' run through, and so does the baseline (X = 0.5).
HELD = """\
import os, time
X = 0.5
Y = 5
while X != 0.5 and os.environ.get("OVERNIGHT_AGENT") == "t-2" and os.path.exists({hold!r}):
    time.sleep(0.02)
print(f"score: {{(X - 3) ** 2 + (Y - 1) ** 2}}")
"""


@contextlib.contextmanager
def _overnight_run(lab: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`overnight run` in the background for the block (killed after it with all it started,
    if the block did not kill it)."""
    with log.open("wb") as err:
        proc = start(
            [*OVERNIGHT, "run", str(lab), "--no-ui"], stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                stop(proc, first=signal.SIGKILL)
            proc.wait()


def test_a_trial_killed_mid_run_is_shown_and_retried_once_by_its_own_agent(
    tmp_path: Path,
) -> None:
    # in the lab's .git folder: the one place under the test's folder that the experiment's
    # sandbox shows it (its /tmp is a private one), and not a file of the lab's commits
    hold = tmp_path / "lab" / ".git" / "hold"
    lab = make_lab(
        tmp_path / "lab",
        script=HELD.format(hold=str(hold)),
        lab={"parallel": 3},
        agents=[{"name": "t", "count": 3}],
    )

    def running(agent: str, requeued_from: int | None = None) -> int | None:
        """The number of `agent`'s trial the store has as running (a retry of one), if any."""
        for t in latest_trials(lab):
            if (
                t.status == "running"
                and t.agent == agent
                and requeued_from in (None, t.requeued_from)
            ):
                return t.number
        return None

    def retries(number: int) -> list[Trial]:
        return [t for t in latest_trials(lab) if t.requeued_from == number]

    def kill_when_running(log: str, requeued_from: int | None = None) -> int:
        with _overnight_run(lab, tmp_path / log) as proc:
            if requeued_from is not None:
                wait_until(lambda: retries(requeued_from) or proc.poll() is not None, timeout=60)
                assert [t.agent for t in retries(requeued_from)] == ["t-2"]
            wait_until(
                lambda: running("t-2", requeued_from) is not None or proc.poll() is not None,
                timeout=120,
            )
            assert proc.poll() is None, (tmp_path / log).read_text()
            number = running("t-2", requeued_from)
            assert number is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        return number

    hold.touch()
    try:
        # killed while t-2's trial runs: status says what was in flight and what happens next
        first = kill_when_running("run-1.log")
        shown = run_cli("status", str(lab))
        assert shown.returncode == 0, shown.stderr
        assert "not running" in shown.stdout and "now:" not in shown.stdout
        assert (
            f"stopped: trial {first} (t-2) was running when overnight stopped; re-queued "
            "for t-2 when `overnight run` starts again" in shown.stdout
        ), shown.stdout
        data = json.loads(run_cli("status", str(lab), "--json").stdout)
        assert data["running"] == [] and data["running_pid"] is None
        (entry,) = [i for i in data["interrupted"] if i["trial"] == first]
        assert (entry["agent"], entry["status"], entry["requeued"]) == ("t-2", "running", True)

        # it runs again for t-2 (not for whichever agent asks the shared study first) and
        # is killed again: once more is all it gets
        retry = kill_when_running("run-2.log", requeued_from=first)
        shown = run_cli("status", str(lab))
        assert (
            f"stopped: trial {retry} (t-2) was running when overnight stopped; not re-queued: "
            "its proposal was re-queued once already" in shown.stdout
        ), shown.stdout
        data = json.loads(run_cli("status", str(lab), "--json").stdout)
        (entry,) = [i for i in data["interrupted"] if i["trial"] == retry]
        assert entry["requeued"] is False

        hold.unlink()
        result = run_cli("run", str(lab), "--trials", "4", "--no-ui")
        assert result.returncode == 0, result.stderr
        trials = latest_trials(lab)
        by_number = {t.number: t for t in trials}
        assert by_number[first].status == by_number[retry].status == "interrupted"
        assert not [t for t in trials if t.requeued_from == retry]
        for t in trials:
            if t.requeued_from is not None:
                assert t.agent == by_number[t.requeued_from].agent, t.number
        assert "stopped:" not in run_cli("status", str(lab)).stdout
    finally:
        hold.unlink(missing_ok=True)  # a held experiment left by a kill ends by itself
        run = latest_run(lab)  # (the test's only run)
        if run is not None:
            kill_marked(RUN_MARKER, run_mark(lab, run.id))
