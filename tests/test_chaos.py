"""kill -9 `overnight run` at random moments, again and again; nothing may be lost or counted twice."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna

from overnight.proposers.optuna import study_name
from overnight.store import store_url
from tests.conftest import OVERNIGHT, git, make_lab, run_cli

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


def _rows(db_path: Path, sql: str) -> list[dict[str, object]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


def _event_count(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        return int(_rows(db_path, "SELECT count(*) AS n FROM ov_events")[0]["n"])  # type: ignore[call-overload]
    except sqlite3.OperationalError:
        return 0  # not created yet


def test_kill_dash_nine_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("CHAOS_SEED", "overnight"))
    lab = make_lab(tmp_path / "lab", script=SCRIPT, parallel=2, agents=2)
    db = lab / ".overnight" / "overnight.db"
    finished_before: dict[int, tuple[object, ...]] = {}
    for i in range(KILLS):
        seen = _event_count(db)
        proc = subprocess.Popen(
            [*OVERNIGHT, "run", str(lab), "--trials", "50"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # let the run make between 1 and 25 writes, then kill it without warning
        target = seen + rng.randint(1, 25)
        deadline = time.monotonic() + 60
        while _event_count(db) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        assert proc.stderr is not None
        proc.stderr.close()
        trials = _rows(db, "SELECT * FROM ov_trials ORDER BY number")
        numbers = [t["number"] for t in trials]
        assert numbers == list(range(1, len(numbers) + 1)), f"kill {i}: numbering broke"
        # nothing finished before this kill was lost or changed by it
        now = {
            int(str(t["number"])): (t["status"], t["metric"], t["candidate_commit"]) for t in trials
        }
        for number, record in finished_before.items():
            assert now[number] == record, f"kill {i}: trial {number} changed after it finished"
        finished_before = {n: r for n, r in now.items() if r[0] in FINAL}

    # a final, uninterrupted run completes and leaves everything consistent
    result = run_cli("run", str(lab), "--trials", "4")
    assert result.returncode == 0, result.stderr
    trials = _rows(db, "SELECT * FROM ov_trials ORDER BY number")
    assert all(t["status"] in FINAL for t in trials)
    assert sum(1 for t in trials if t["status"] == "interrupted") >= 1, "no kill landed mid-trial"
    by_number = {t["number"]: t for t in trials}
    retried = [t for t in trials if t["requeued_from"] is not None]
    for t in retried:
        original = by_number[t["requeued_from"]]
        assert original["status"] == "interrupted"
        assert (
            json.loads(str(t["proposal"]))["params"]
            == json.loads(str(original["proposal"]))["params"]
        )
    assert len({t["requeued_from"] for t in retried}) == len(retried), "a trial was re-queued twice"
    for agent in _rows(db, "SELECT * FROM ov_agents"):
        kept = [t for t in trials if t["agent"] == agent["name"] and t["status"] == "kept"]
        if kept:
            assert agent["best_commit"] == kept[-1]["candidate_commit"]
            metrics = [t["metric"] for t in kept]
            assert metrics == sorted(metrics, reverse=True)  # type: ignore[type-var]
        assert (
            git(lab, "rev-parse", f"refs/heads/{agent['branch']}").strip() == agent["best_commit"]
        )
        worktree = Path(str(agent["worktree"]))
        assert git(worktree, "rev-parse", "HEAD").strip() == agent["best_commit"]
        assert git(worktree, "status", "--porcelain") == ""
    # the Optuna study heard about every measured trial exactly once
    run_id = str(trials[0]["run_id"])
    study = optuna.load_study(study_name=study_name(run_id), storage=store_url(lab))
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = [
        t for t in trials if t["status"] in ("kept", "discarded") and t["agent"] != "baseline"
    ]
    told_numbers = sorted(t.number for t in told if not t.user_attrs.get("overnight_baseline"))
    assert told_numbers == sorted(json.loads(str(t["proposal"]))["optuna_trial"] for t in measured)
    assert git(lab, "status", "--porcelain") == ""
