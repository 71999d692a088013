"""Per-trial orchestration overhead of the lab, on SQLite and PostgreSQL.

Runs `overnight run --trials N` on a no-op experiment (one agent, one slot, the
optuna runtime with one knob) and reads the ledger back: a trial's overhead is
the time between the end of the previous trial and the end of this one, minus
the run's own time (the experiment's process, start to exit). That covers
everything overnight does per trial: asking Optuna, writing the knob, the git
commit, the integrity guard, every store write, telling Optuna, the reset.

As a same-run baseline it also times a bare `python -c 'print(...)'` spawn
(the no-op experiment itself), and prints overhead as a multiple of it.

    .venv/bin/python benchmarks/lab_overhead.py [--trials 200] [--pg URL] [--no-pg]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import commit_lab, percentile, pg_schema

from overnight.store import open_store

CONFIG = """\
[lab]
name = "noop"
editable = ["knob.py"]
run = "{run}"
metric = "score"
budget = "30s"
grace = "5s"

[[knobs]]
name = "X"
file = "knob.py"
low = 0
high = 1

[[agents]]
name = "tuner"
runtime = "optuna"
"""


def make_lab(root: Path) -> Path:
    run = f"{sys.executable} -c 'print(\\\"score: 1\\\")'"
    return commit_lab(
        root,
        {
            "overnight.toml": CONFIG.format(run=run),
            "knob.py": "X = 0.5\n",
            "program.md": "# noop\n",
        },
    )


def measure(label: str, root: Path, trials: int, db_url: str | None) -> dict[str, float]:
    env = {**os.environ}
    if db_url:
        env["OVERNIGHT_DB"] = db_url
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "overnight", "run", str(root), "--trials", str(trials)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label}: overnight run failed:\n{proc.stderr}")
    store = open_store(db_url or f"sqlite:///{root / '.overnight' / 'overnight.db'}")
    run = store.latest_run("noop")
    assert run is not None
    done = [t for t in store.trials(run.id) if t.agent != "baseline"]
    store.close()
    assert len(done) == trials, f"expected {trials} trials, got {len(done)}"
    overheads = []
    previous = None
    for trial in done:
        assert trial.finished_at is not None and trial.duration_s is not None
        if previous is not None:
            overheads.append(trial.finished_at - previous - trial.duration_s)
        previous = trial.finished_at
    run_time = [t.duration_s or 0.0 for t in done]
    span = done[-1].finished_at - done[0].finished_at  # type: ignore[operator]
    return {
        "p50_ms": percentile(overheads, 50) * 1000,
        "p95_ms": percentile(overheads, 95) * 1000,
        "mean_ms": statistics.fmean(overheads) * 1000,
        "run_p50_ms": percentile(run_time, 50) * 1000,
        "trials_per_s": (len(done) - 1) / span,
        "wall_s": wall,
    }


def spawn_baseline(n: int = 30) -> float:
    """p50 of spawning the no-op experiment by itself, in ms."""
    command = f"{sys.executable} -c 'print(\"score: 1\")'"
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(shlex.split(command), capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return percentile(times, 50) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--pg", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    spawn = spawn_baseline()
    print(f"baseline: spawning the no-op experiment alone p50 {spawn:.1f} ms")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure("sqlite", make_lab(Path(tmp) / "sqlite"), args.trials, None)
        if not args.no_pg:
            with pg_schema(args.pg) as url:
                results["postgresql"] = measure(
                    "postgresql", make_lab(Path(tmp) / "pg"), args.trials, url
                )
    print(f"\n{args.trials} trials of a no-op experiment, one agent, one slot:")
    print(
        f"{'store':<11} {'overhead p50':>13} {'p95':>9} {'mean':>9} {'run p50':>9}"
        f" {'trials/s':>9} {'p50/spawn':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<11} {r['p50_ms']:>10.1f} ms {r['p95_ms']:>6.1f} ms {r['mean_ms']:>6.1f} ms"
            f" {r['run_p50_ms']:>6.1f} ms {r['trials_per_s']:>9.2f} {r['p50_ms'] / spawn:>9.2f}x"
        )
    target = results["sqlite"]["p50_ms"]
    print(
        f"\ntarget: p50 <= 100 ms with SQLite -> {'met' if target <= 100 else 'NOT met'} ({target:.1f} ms)"
    )


if __name__ == "__main__":
    main()
