"""Trials on a Ray cluster against trials on this machine, in the same run of this script.

Starts a cluster of its own in a network namespace of its own (everything on
127.0.0.1): a head that runs no trials and two workers of 2 CPUs each. Then the
same lab — optuna agents, `parallel = 4`, an experiment that sleeps one second (run by
`python -I -S`: this venv's editable installs make a plain start ~100 ms slower, which
is the experiment's own start, not overnight's dispatch) —
runs `--trials N` with `kind = "local"` and with `kind = "ray"`, first with as many
agents as slots (4), then with more (`--agents 4,8`: trials then wait for a slot). It
prints, for each:

- **dispatch overhead**: p50 / p95 from the trial's `running` (its `started_at`) to
  the experiment's first line (which prints its own clock): locally a process
  spawn, on Ray also shipping the commit and the task's start on a worker;
- **slot utilization**: the experiments' own seconds (first line to last) over 4
  slots x the span from the first experiment's start to the last one's end (the
  target on Ray: >= 90%);
- **between experiments**: p50 of an agent's time from one of its experiments' last
  line to its next one's first: everything overnight (and the optuna proposer) does
  per trial outside the experiment, plus the wait for a slot. With as many agents as
  slots a slot idles all that time, so utilization is at most 1 / (1 + that / 1 s);
- **to node** (Ray only): p50 from the `trial.dispatched` event (written before the
  commit is archived and the task submitted) to `trial.placed` (the task started on a
  node and unpacked the commit): what dispatch costs before `running`;
- **CPU ms**: CPU time per trial of `overnight run` and what it starts (git, the
  experiment's `timeout` and shell), the experiments' own CPU taken out (each prints
  it): overnight's work per trial on the head, which the machine's load hardly moves;
- **the head's memory**: the RSS of the head node's processes (GCS, raylet, ...)
  at the end;

and the machine's load average before and after (other work on it slows both).
`--before REF` also runs the lab with 4 agents, locally and on Ray, on the overnight
of commit REF, for a before/after in the same run.

    .venv/bin/python benchmarks/ray_cluster.py [--trials 200] [--agents 4,8] [--before main]

(Not `ray.py`: run from benchmarks/, that name would shadow the `ray` package.)

Needs root (unshare, nsenter) and Ray (`pip install 'overnight[ray]'`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from overnight.store import open_store, store_url

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
PORT = 20000 + uuid.uuid4().int % 30000
"""The head's GCS port: one of its own (`ray start --head` refuses a port any GCS on the
machine was started with, a test cluster's included)."""
SCRIPT = """\
import time
print(f"t0: {time.time()!r}", flush=True)
import resource
X = 0.5
time.sleep(1.0)
print(f"t1: {time.time()!r}")
print(f"score: {(X - 3) ** 2}")
used = resource.getrusage(resource.RUSAGE_SELF)
print(f"cpu: {used.ru_utime + used.ru_stime!r}")
"""
CONFIG = """\
[lab]
name = "bench"
editable = ["exp.py"]
run = "{python} -I -S exp.py"
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
count = {agents}
{executor}
"""
_STAMP = re.compile(r"^(t[01]): ([0-9.]+)$", re.M)
_CPU = re.compile(r"^cpu: ([0-9.]+)$", re.M)


def ray_pids(temp: Path) -> set[int]:
    """Processes of this script's head: Ray's, naming its temp folder (not another Ray
    cluster's on this machine)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"/ray/" in args and str(temp).encode() in args:
                found.add(int(entry.name))
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


def make_lab(root: Path, executor: str, agents: int = 4) -> Path:
    root.mkdir(parents=True)
    (root / "exp.py").write_text(SCRIPT)
    (root / "program.md").write_text("# bench\n")
    config = CONFIG.format(python=sys.executable, executor=executor, agents=agents)
    (root / "overnight.toml").write_text(config)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "lab"]):
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=root, check=True
        )
    return root


def measure(lab: Path, cpu_s: float, local: bool) -> dict[str, float]:
    """The figures of the lab's latest run; `cpu_s`: the CPU seconds `overnight run` and
    its descendants used (locally the experiments too: their own CPU is taken out)."""
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("bench")
        assert run is not None
        trials = [t for t in store.trials(run.id) if t.log_path and t.started_at]
        sent = {
            e.trial: e.at for e in store.events(run.id, kinds=["trial.dispatched"], limit=10**6)
        }
        placed = [
            e.at - sent[e.trial]
            for e in store.events(run.id, kinds=["trial.placed"], limit=10**6)
            if e.trial in sent
        ]
    finally:
        store.close()
    overheads, spans, between, experiments_cpu = [], [], [], 0.0
    last_end: dict[str, float] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        text = Path(trial.log_path or "").read_text()
        stamps = _STAMP.findall(text)
        experiments_cpu += sum(float(v) for v in _CPU.findall(text))
        starts = [float(v) for k, v in stamps if k == "t0"]
        ends = [float(v) for k, v in stamps if k == "t1"]
        if starts:
            overheads.append(starts[-1] - float(trial.started_at or 0))
            if trial.agent in last_end:
                between.append(starts[0] - last_end[trial.agent])
        if ends:
            last_end[trial.agent] = ends[-1]
        spans += list(zip(starts, ends, strict=False))
    busy = sum(end - start for start, end in spans)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return {
        "trials": len(trials),
        "p50_ms": 1000 * statistics.median(overheads),
        "p95_ms": 1000 * percentile(overheads, 0.95),
        "utilization": busy / (4 * wall),
        "between_ms": 1000 * statistics.median(between),
        "to_node_ms": 1000 * statistics.median(placed) if placed else math.nan,
        "cpu_ms": 1000 * (cpu_s - (experiments_cpu if local else 0.0)) / len(trials),
    }


def kill_namespace(holder: int) -> None:
    """SIGKILL every process in the network namespace `holder` holds, but `holder`."""
    mine = os.readlink(f"/proc/{holder}/ns/net")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == holder:
            continue
        try:
            if os.readlink(entry / "ns" / "net") == mine:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def checkout_of(ref: str, into: Path) -> Path:
    """The tracked files of this repository's commit `ref`, unpacked in `into`."""
    into.mkdir(parents=True)
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--agents", default="4,8", help="agent counts to run, comma-separated")
    parser.add_argument("--before", metavar="REF", help="also run locally on commit REF")
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
    # the namespace is ready (loopback up) before anything enters it: entering by pid
    # before unshare has made it would enter this machine's namespace instead
    ns = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert ns.stdout is not None and ns.stdout.readline().strip() == "up", "unshare -n failed"
    enter = ["nsenter", "-t", str(ns.pid), "-n"]
    log = (work / "ray.out").open("w")

    def ray(*words: str) -> None:
        subprocess.run([*enter, RAY, *words], env=env, stdout=log, stderr=log, check=True)

    ray_section = f'\n[executor]\nkind = "ray"\naddress = "127.0.0.1:{PORT}"\n'
    plan: list[tuple[str, str, int, Path]] = []
    if args.before:
        old = checkout_of(args.before, work / "before")
        plan.append((f"local @ {args.before}", "", 4, old))
        plan.append((f"ray @ {args.before}", ray_section, 4, old))
    for agents in (int(n) for n in args.agents.split(",")):
        plan += [("local", "", agents, ROOT), ("ray", ray_section, agents, ROOT)]
    try:
        ray(
            "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
            "--object-store-memory=100000000",
        )  # fmt: skip
        head = ray_pids(temp)
        for _ in range(2):
            ray(
                "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
                "--num-cpus=2", "--object-store-memory=100000000",
            )  # fmt: skip
        loads = [load()]
        results = []
        for index, (kind, executor, agents, code) in enumerate(plan):
            lab = make_lab(work / str(index), executor, agents)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(
                [*enter, sys.executable, "-m", "overnight", "run", str(lab), "--no-ui",
                 "--trials", str(args.trials)],
                env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True,
                timeout=3600, cwd=lab,  # (`-m` puts the cwd first: a checkout there would win)
            )  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"{kind}: overnight run failed:\n{done.stdout}\n{done.stderr}")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = sum(getattr(after, f) - getattr(used, f) for f in ("ru_utime", "ru_stime"))
            results.append((kind, agents, measure(lab, cpu_s, local=not executor)))
        loads.append(load())
        head_mb = rss_mb({p for p in head if Path(f"/proc/{p}").exists()})
        print(
            f"{args.trials} one-second trials, 4 slots; figures from one run on "
            f"{os.cpu_count()} cores (load average before {loads[0]}, after {loads[1]})"
        )
        print(
            f"{'':14}{'agents':>7}{'trials':>8}{'p50 ms':>8}{'p95 ms':>8}{'slots busy':>12}"
            f"{'between ms':>12}{'to node ms':>12}{'CPU ms':>8}"
        )
        for kind, agents, r in results:
            to_node = "-" if math.isnan(r["to_node_ms"]) else f"{r['to_node_ms']:.0f}"
            print(
                f"{kind:14}{agents:>7}{r['trials']:>8.0f}{r['p50_ms']:>8.0f}{r['p95_ms']:>8.0f}"
                f"{r['utilization']:>11.0%}{r['between_ms']:>12.0f}{to_node:>12}"
                f"{r['cpu_ms']:>8.0f}"
            )
        print(f"head node's processes: {head_mb:.0f} MB resident ({len(head)} processes)")
    finally:
        kill_namespace(ns.pid)  # (`ray stop` would stop every Ray cluster on the machine)
        ns.kill()
        ns.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
