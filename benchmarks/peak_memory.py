"""What measuring a trial's peak memory costs (memory_gb when a run prints no peak_vram_mb),
and how close it comes.

- **one sample**: reading `/proc/<pid>/stat` of every process on the machine and summing
  the RSS of one session's, with the machine's processes as they are and with 300 more
  idle ones (a busy box);
- **the sampler's share of a core** over a long run: one sample every half second;
- **a no-op trial through the runner** with the sampler and `wait4` against the same
  runner with a sampler that samples nothing, alternating round by round;
- **accuracy**: experiments holding known memory (one process; a parent and a child at
  once, as a data loader's workers do), measured against what they hold.

    .venv/bin/python benchmarks/peak_memory.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import percentile

from overnight.lab import memory, runner
from overnight.lab.sandbox import environment

_MB = 2**20


def _per_sample(seconds: float = 2.0) -> tuple[float, float, int]:
    """(wall ms, CPU ms) per sample, and the processes each one read."""
    own = os.getsid(0)
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        memory.session_rss(own)
        count += 1
    wall = (time.perf_counter() - started) / count * 1000
    return wall, (time.process_time() - cpu) / count * 1000, len(_pids())


def _pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


class _NoSampling:
    """The runner's sampler, minus the sampling: what the runner costs without it."""

    def __init__(self, session: int) -> None:
        self.session = session

    def stop(self) -> int:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    print("one sample (sum the RSS of one session's processes):")
    wall, cpu, seen = _per_sample()
    print(f"  {seen:>5} processes on the machine: {wall:6.3f} ms wall, {cpu:6.3f} ms CPU")
    idle = [
        subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL)
        for _ in range(300)
    ]
    try:
        wall_busy, cpu_busy, seen_busy = _per_sample()
    finally:
        for proc in idle:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(
        f"  {seen_busy:>5} processes on the machine: {wall_busy:6.3f} ms wall, {cpu_busy:6.3f} ms CPU"
    )
    every = memory.SAMPLE_S[-1]
    print(
        f"  the sampler over a long run (a sample every {every:g} s): {cpu / every / 10:.3f}% "
        f"of a core ({cpu_busy / every / 10:.3f}% with {seen_busy} processes)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = environment(os.environ)
        log = root / "log"
        ways = {"sampled": memory.PeakMemory, "not sampled": _NoSampling}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, sampler in ways.items():
                runner.PeakMemory = sampler  # type: ignore[assignment,misc]
                started = time.perf_counter()
                result = runner.run_budgeted(
                    "true", cwd=root, log_path=log, timeout_s=60, metric="m", env=env
                )
                times[name].append(time.perf_counter() - started)
                assert result.exit_code == 0, result.tail
        runner.PeakMemory = memory.PeakMemory  # type: ignore[misc]
        print(f"a no-op experiment through the runner, {args.rounds} rounds (ms):")
        base = statistics.median(times["not sampled"])
        for name, samples in times.items():
            p50, p95 = statistics.median(samples) * 1000, percentile(samples, 95) * 1000
            print(f"  {name:<12} p50 {p50:6.2f}  p95 {p95:6.2f}  ({p50 - base * 1000:+.2f} ms)")

        print("accuracy (held vs measured peak RSS of the tree, MB):")
        child = root / "child.py"
        child.write_text("import time\nheld = b'y' * (150 * 2**20)\ntime.sleep(1.5)\n")
        for label, held, code in (
            ("one process", 300, "held = b'x' * (300 * 2**20)\n"),
            (
                "parent + child",
                200 + 150,
                "import subprocess, sys\nheld = b'x' * (200 * 2**20)\n"
                f"subprocess.run([sys.executable, {str(child)!r}], check=True)\n",
            ),
            ("a 0.1 s spike", 400, "import time\nheld = b'x' * (400 * 2**20)\ntime.sleep(0.1)\n"),
        ):
            script = root / "experiment.py"
            script.write_text(code)
            result = runner.run_budgeted(
                f"{sys.executable} {script}", cwd=root, log_path=log, timeout_s=60, metric="m",
                env=env,
            )  # fmt: skip
            assert result.exit_code == 0, result.tail
            measured = result.peak_rss_mb or 0.0
            print(
                f"  {label:<15} held {held:5d}  measured {measured:7.1f}  ({measured - held:+.1f})"
            )


if __name__ == "__main__":
    main()
