"""The disk through a real `overnight run`: all trial logs together stay under `max_logs`
(the oldest lose their middles, the ledger keeps their tails), and no trial starts while
free space is under `min_free_disk`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.lab.disk import TrialLogs
from overnight.records import Event, Trial
from overnight.sessions import wait_until
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started
from tests.helpers.store import latest_events, latest_trials

LOUD = """\
import sys
X = 0.5
Y = 5
print("first line of the trial")
for i in range(1000):
    print(f"line {i:04d} " + "x" * 80)
print("last lines of the trial")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
sys.exit(0 if X == 0.5 else 1)  # the baseline is measured; every change crashes, with a tail
"""
TRIMMED = "bytes dropped here to keep the lab's trial logs under max_logs"


def ledger(lab: Path) -> tuple[list[Trial], list[Event]]:
    return latest_trials(lab), latest_events(lab)


def kinds(lab: Path) -> list[str]:
    return [e.kind for e in ledger(lab)[1]]


def test_the_logs_together_stay_under_max_logs_oldest_middles_first(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=LOUD, lab={"max_log": "100KB", "max_logs": "600KB"})
    done = run_cli("run", str(lab), "--trials", "8")
    assert done.returncode == 0, done.stdout + done.stderr
    logs = sorted((lab / ".overnight" / "logs").glob("*/trial-*.log"))
    assert len(logs) == 9  # the baseline and 8 trials
    assert sum(p.stat().st_size for p in logs) <= 600_000

    texts = [p.read_text() for p in logs]
    whole = len(texts[-1])
    assert 90_000 < whole < 100_000 and TRIMMED not in texts[-1], "the newest log is whole"
    trimmed = [t for t in texts if TRIMMED in t]
    assert logs and texts[0] in trimmed, "the oldest log lost its middle first"
    assert len(trimmed) < len(texts) - 1, "only as many logs as needed were trimmed"
    for text in trimmed:
        assert text.startswith("first line of the trial\nline 0000 ")
        assert "last lines of the trial\nscore: " in text[-200:]
        assert len(text) < 40_000
    assert [TRIMMED in t for t in texts] == sorted((TRIMMED in t for t in texts), reverse=True), (
        "oldest first"
    )

    trials, _ = ledger(lab)
    crashed = [t for t in trials if t.status.value == "crashed"]
    assert len(crashed) == 8
    for trial in crashed:  # trimmed or not, the ledger has each trial's last lines
        assert trial.log_tail and "last lines of the trial\nscore: " in trial.log_tail


def test_no_trial_starts_below_min_free_disk_and_the_run_still_stops_by_its_rules(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab", lab={"min_free_disk": "1000PB"})
    started = time.monotonic()
    done = run_cli("run", str(lab), "--trials", "1", "--for", "5s", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started >= 5, "it stopped by its --for rule, not before"

    trials, events = ledger(lab)
    assert [(t.agent, t.status.value, t.reason) for t in trials] == [
        ("baseline", "interrupted", "stopped before it ran")
    ]
    assert trials[0].started_at is None and trials[0].log_path is None
    assert not (lab / ".overnight" / "logs").exists()
    low = [e for e in events if e.kind == "lab.disk_low"]
    assert len(low) == 1, "once per episode, not once per look"
    assert low[0].payload["min_free_disk"] == 10**18
    assert 0 < int(low[0].payload["free_bytes"]) < 10**18
    assert events[-1].kind == "run.stopped"

    # the floor is about this machine, not the lab: lowered, the same run goes on
    config = lab / "overnight.toml"
    config.write_text(config.read_text().replace('"1000PB"', '"1MB"'))
    git(lab, "commit", "-qam", "a lower floor")
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    first_run = trials[0].run_id
    trials, events = ledger(lab)
    assert {t.run_id for t in trials} == {first_run} and "run.resumed" in [e.kind for e in events]
    assert [(t.agent, t.status.value) for t in trials][:2] == [
        ("baseline", "interrupted"),
        ("baseline", "kept"),
    ]
    assert len(trials) == 3


@pytest.fixture
def ballast(tmp_path: Path) -> Iterator[Path]:
    """A file holding disk space on the lab's filesystem until the test deletes it."""
    path = tmp_path / "ballast"
    yield path
    path.unlink(missing_ok=True)


def test_a_run_waits_for_free_space_and_goes_on_when_it_is_back(
    tmp_path: Path, ballast: Path
) -> None:
    size = 400 * 10**6
    with ballast.open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)  # blocks taken at once, nothing written
    free = shutil.disk_usage(tmp_path).free
    # Under the floor with the ballast, over it without: others' writes on this machine
    # would have to move free space by size / 2 within the test to spoil it.
    lab = make_lab(tmp_path / "lab", lab={"min_free_disk": free + size // 2})
    with started(
        [*OVERNIGHT, "run", str(lab), "--trials", "1", "--for", "2m", "--no-ui"],
        first=signal.SIGTERM,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        wait_until(lambda: "lab.disk_low" in kinds(lab) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None
        assert [t.status.value for t in ledger(lab)[0]] == ["checked"], "waiting, not running"
        ballast.unlink()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    trials, events = ledger(lab)
    assert [t.status.value for t in trials][:1] == ["kept"] and len(trials) == 2
    disk = [e for e in events if e.kind.startswith("lab.disk")]
    assert [e.kind for e in disk] == ["lab.disk_low", "lab.disk_recovered"]
    assert int(disk[1].payload["free_bytes"]) >= free + size // 2


def test_a_max_logs_too_small_for_the_running_trials_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab", lab={"max_log": "100KB", "max_logs": "150KB"})
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode == 2
    line = next(
        i
        for i, text in enumerate((lab / "overnight.toml").read_text().splitlines(), 1)
        if text.startswith("max_logs")
    )
    assert f"overnight.toml:{line}: lab.max_logs: 150000 bytes is too small" in done.stderr
    assert "raise it to at least 200000 bytes" in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_logs_another_process_trimmed_count_as_trimmed(tmp_path: Path) -> None:
    """`overnight try` trims in its own process: the run's next look must not take the
    stale sizes it remembers for a reason to trim more (or to empty logs)."""
    run = tmp_path / "logs" / "20260101-000000"
    run.mkdir(parents=True)
    finished = time.time() - 60
    for n in range(1, 7):
        log = run / f"trial-{n:05d}.log"
        log.write_text(f"trial {n}\n" + ("x" * 99 + "\n") * 1000)
        os.utime(log, (finished, finished))
    os.utime(run, (finished, finished))
    sizes = {p.name: p.stat().st_size for p in run.iterdir()}
    ours, theirs = TrialLogs(run.parent, 700_000), TrialLogs(run.parent, 700_000)
    assert ours.make_room(0, set()).logs == 0  # it has seen (and remembers) every log

    assert theirs.make_room(200_000, set()).logs == 2  # the oldest two lose their middles
    after = ours.make_room(150_000, set())
    assert after.total + 150_000 <= 700_000
    assert {p.name: p.stat().st_size for p in run.iterdir()} == {
        **sizes,
        "trial-00001.log": (run / "trial-00001.log").stat().st_size,
        "trial-00002.log": (run / "trial-00002.log").stat().st_size,
    }, "no log beyond the two already trimmed was touched"
    assert all(TRIMMED in (run / f"trial-0000{n}.log").read_text() for n in (1, 2))
