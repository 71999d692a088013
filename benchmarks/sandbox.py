"""What the walls around an experiment cost, and why the watchdog is coreutils `timeout`.

Runs a no-op experiment (`true`) through the real budgeted runner
(`overnight.lab.runner.run_budgeted`) with each way of wrapping it, alternating
the ways round by round so the machine's drift hits them alike, and prints the
median and p95 time from spawn to exit and each way's cost over the bare run:

- `bare`: the shell alone (no budget survives overnight's death);
- `timeout`: coreutils `timeout --signal=KILL` leading the group (the watchdog
  overnight uses where no sandbox runs);
- `python watchdog`: the cheapest Python watchdog possible, an isolated
  interpreter (`python -I -S`) that starts the command; what a watchdog of our
  own would cost at the least;
- `bwrap`: the sandbox overnight uses by default (read-only root, the lab's
  state hidden, a PID namespace, --die-with-parent).

It also measures the redaction of output: MB/s of 64 KiB chunks through the
stream redactor with no secret registered and with 20 registered.

    .venv/bin/python benchmarks/sandbox.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _bench import percentile

from overnight import redaction
from overnight.lab.runner import run_budgeted
from overnight.lab.sandbox import Walls, bwrap_problem, environment, hidden_paths, watchdog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        worktree = root / ".overnight" / "worktrees" / "run" / "agent"
        worktree.mkdir(parents=True)
        env = environment(os.environ)
        ways: dict[str, list[str]] = {
            "bare": [],
            "timeout": watchdog(300),
            "python watchdog": [os.path.realpath(sys.executable), "-I", "-S", "-c", _PYDOG],
        }
        problem = bwrap_problem()
        if problem is None:
            walls = Walls(
                cwd=worktree,
                writable=(worktree,),
                hidden=hidden_paths(root / ".overnight"),
                visible=(root,),
            )
            ways["bwrap"] = walls.argv()
        else:
            print(f"bwrap: skipped ({problem})")
        times: dict[str, list[float]] = {name: [] for name in ways}
        log = root / "log"
        for _ in range(args.rounds):
            for name, wrap in ways.items():
                started = time.perf_counter()
                result = run_budgeted(
                    "true", cwd=worktree, log_path=log, timeout_s=300, metric="m",
                    env=env, wrap=wrap,
                )  # fmt: skip
                times[name].append(time.perf_counter() - started)
                assert result.exit_code == 0, (name, result.tail)
    base = statistics.median(times["bare"])
    print(f"a no-op experiment through the runner, {args.rounds} rounds (ms):")
    print(f"  {'way':<16} {'p50':>7} {'p95':>7}  {'cost over bare (p50)':>20}")
    for name, samples in times.items():
        p50, p95 = statistics.median(samples) * 1000, percentile(samples, 95) * 1000
        extra = (statistics.median(samples) - base) * 1000
        print(f"  {name:<16} {p50:7.2f} {p95:7.2f}  {extra:+17.2f} ms  ({p50 / base / 1000:.2f}x)")

    chunk = (b"loss: 0.1234 step 100 lr 3e-4 " * 2200)[: 64 * 1024]
    print("redacting trial output (64 KiB chunks):")
    print(f"  no secret registered: {_throughput(chunk):8.0f} MB/s")
    redaction.register(*(f"sk-bench-{i:02d}-{os.urandom(16).hex()}" for i in range(20)))
    print(f"  20 secrets registered: {_throughput(chunk):7.0f} MB/s")


_PYDOG = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _throughput(chunk: bytes, seconds: float = 1.0) -> float:
    stream = redaction.StreamRedactor()
    feed: Callable[[bytes], bytes] = stream.feed
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        feed(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - started) / 1e6


if __name__ == "__main__":
    main()
