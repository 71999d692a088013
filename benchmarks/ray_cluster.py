"""Trials on a Ray cluster against trials on this machine, in the same run of this script.

Starts a cluster of its own in a network namespace of its own (everything on
127.0.0.1): a head that runs no trials and two workers of 2 CPUs each. Then the
same lab — 4 optuna agents, `parallel = 4`, an experiment that sleeps one second —
runs `--trials N` twice: `kind = "local"`, then `kind = "ray"`. It prints, for each:

- **dispatch overhead**: p50 / p95 from the trial's `running` (its `started_at`) to
  the experiment's first line (which prints its own clock): locally a process
  spawn, on Ray also shipping the commit and the task's start on a worker;
- **slot utilization**: the experiments' own seconds over 4 slots x the span from
  the first experiment's start to the last one's end (the target on Ray: >= 90%);
- **the head's memory**: the RSS of the head node's processes (GCS, raylet, ...)
  at the end.

    .venv/bin/python benchmarks/ray_cluster.py [--trials 200]

(Not `ray.py`: run from benchmarks/, that name would shadow the `ray` package.)

Needs root (unshare, nsenter) and Ray (`pip install 'overnight[ray]'`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from overnight.store import open_store, store_url

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6381
SCRIPT = """\
import time
print(f"t0: {time.time()!r}", flush=True)
X = 0.5
time.sleep(1.0)
print(f"t1: {time.time()!r}")
print(f"score: {(X - 3) ** 2}")
"""
CONFIG = """\
[lab]
name = "bench"
editable = ["exp.py"]
run = "{python} exp.py"
metric = "score"
budget = "30s"
grace = "5s"
parallel = 4
min_delta = 0
sandbox = "none"

[[knobs]]
name = "X"
file = "exp.py"
low = -5
high = 5

[[agents]]
name = "t"
count = 4
{executor}
"""
_STAMP = re.compile(r"^(t[01]): ([0-9.]+)$", re.M)


def ray_pids() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/ray/" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def make_lab(root: Path, executor: str) -> Path:
    root.mkdir(parents=True)
    (root / "exp.py").write_text(SCRIPT)
    (root / "program.md").write_text("# bench\n")
    config = CONFIG.format(python=sys.executable, executor=executor)
    (root / "overnight.toml").write_text(config)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "lab"]):
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=root, check=True
        )
    return root


def measure(lab: Path) -> dict[str, float]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("bench")
        assert run is not None
        trials = [t for t in store.trials(run.id) if t.log_path and t.started_at]
    finally:
        store.close()
    overheads, spans = [], []
    for trial in trials:
        stamps = _STAMP.findall(Path(trial.log_path or "").read_text())
        starts = [float(v) for k, v in stamps if k == "t0"]
        ends = [float(v) for k, v in stamps if k == "t1"]
        if starts:
            overheads.append(starts[-1] - float(trial.started_at or 0))
        spans += list(zip(starts, ends, strict=False))
    busy = sum(end - start for start, end in spans)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    overheads.sort()
    return {
        "trials": len(trials),
        "p50_ms": 1000 * statistics.median(overheads),
        "p95_ms": 1000 * overheads[int(0.95 * (len(overheads) - 1))],
        "utilization": busy / (4 * wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    temp = Path(f"/tmp/ovb-{uuid.uuid4().hex[:6]}")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OVERNIGHT_AUDIT_KEY": str(work / "audit.key"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    ns = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    enter = ["nsenter", "-t", str(ns.pid), "-n"]
    log = (work / "ray.out").open("w")

    def ray(*words: str) -> None:
        subprocess.run([*enter, RAY, *words], env=env, stdout=log, stderr=log, check=True)

    try:
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True)
        before = ray_pids()
        ray(
            "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
            "--object-store-memory=100000000",
        )  # fmt: skip
        head = ray_pids() - before
        for _ in range(2):
            ray(
                "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
                "--num-cpus=2", "--object-store-memory=100000000",
            )  # fmt: skip
        results = {}
        for kind, executor in (
            ("local", ""),
            ("ray", f'\n[executor]\nkind = "ray"\naddress = "127.0.0.1:{PORT}"\n'),
        ):
            lab = make_lab(work / kind, executor)
            done = subprocess.run(
                [*enter, sys.executable, "-m", "overnight", "run", str(lab), "--no-ui",
                 "--trials", str(args.trials)],
                env=env, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"{kind}: overnight run failed:\n{done.stdout}\n{done.stderr}")
            results[kind] = measure(lab)
        head_mb = rss_mb({p for p in head if Path(f"/proc/{p}").exists()})
        print(f"{args.trials} one-second trials, 4 slots (4 agents); figures from one run")
        print(f"{'':8}{'trials':>8}{'p50 ms':>10}{'p95 ms':>10}{'slots busy':>12}")
        for kind, r in results.items():
            print(
                f"{kind:8}{r['trials']:>8.0f}{r['p50_ms']:>10.0f}{r['p95_ms']:>10.0f}"
                f"{r['utilization']:>11.0%}"
            )
        print(f"head node's processes: {head_mb:.0f} MB resident ({len(head)} processes)")
    finally:
        subprocess.run([*enter, RAY, "stop", "--force"], env=env, capture_output=True)
        ns.kill()
        ns.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
