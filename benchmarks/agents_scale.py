"""Many external agents at once: state-detection latency, supervisor CPU, memory per agent.

Runs `overnight run` on a no-op lab with N `claude-code` agents (N = 10, then
50) whose CLI is `_standin_claude.py`: a stand-in that makes one real request
per turn through the lab's gateway to an in-process fake Anthropic provider and
prints Claude Code's stream-json lines, so everything overnight does per agent
is real (tmux sessions, `overnight agent` processes, the gateway, the store)
except the CLI's own weight. Two phases in the same run, for each N:

- at rest: every agent is mid-turn, its model not answering (the stand-ins wait
  at a gate the benchmark holds), which is where real agents spend their nights;
  what it costs to watch N agents that do nothing, over 15 s;
- turning: the gate opens; with `idle_after = "1s"`, every agent is nudged into a
  new turn a second after its last one ended. After a warm-up (every agent idle
  once, then 5 s), over the measured window:
  - state-detection latency: from the end of a turn (the stand-in notes the time
    just before printing its `result` line) to the agent's `idle` state, as
    stamped in its `agent.state` event (`at`), and as first readable from the
    store by a plain SQLite reader polling every 20 ms (`visible`);
  - turns/s, and the gateway round trip the stand-ins saw.

In both phases, CPU as % of one core: `overnight run` (supervisor and the
in-process gateway), its short-lived children (tmux client calls, git), the
`overnight agent` processes and their CLI turns, the tmux server, this process
(fake provider and reader), and the whole machine. Memory at the end: RSS and
PSS of each `overnight agent` process, RSS of `overnight run` (and its growth
from the smallest N to the largest, per agent added).

The agents run on a tmux server of their own (a private TMUX_TMPDIR), so other
overnight sessions on the machine neither disturb the figures nor get touched;
the benchmark checks that no session or process of its labs is left behind.

    .venv/bin/python benchmarks/agents_scale.py [--agents 10,50] [--window 40]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _bench import commit_lab, exit_on_sigterm, machine_line, percentile

from overnight.store import open_store, store_url
from overnight.testing import FakeProvider

STANDIN = Path(__file__).resolve().parent / "_standin_claude.py"
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
REST_S = 15.0
WARMUP_S = 5.0
DRAIN_S = 3.0
"""Kept running after the window, so the last turns of the window get their `idle`."""
READ_EVERY_S = 0.02

CONFIG = """\
[lab]
name = "noop"
editable = ["exp.py"]
run = "{python} exp.py"
metric = "score"
budget = "30s"

[[agents]]
name = "a"
runtime = "claude-code"
model = "bench"
count = {agents}
idle_after = "1s"

[gateway]
port = 0

[[gateway.upstreams]]
name = "fake"
protocol = "anthropic"
base_url = "{url}"

[gateway.models]
bench = ["fake/claude-fake-1"]
"""


def make_lab(root: Path, agents: int, url: str) -> Path:
    return commit_lab(
        root,
        {
            "overnight.toml": CONFIG.format(python=sys.executable, agents=agents, url=url),
            "exp.py": 'print("score: 1")\n',
            "program.md": "# noop\n",
        },
    )


def standin_wrapper(directory: Path) -> Path:
    """The `claude` the agents run: the stand-in under this venv's python, without site."""
    path = directory / "claude"
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {STANDIN} "$@"\n')
    path.chmod(0o755)
    return path


# --- /proc ----------------------------------------------------------------------------------


def _stat(path: str) -> list[str] | None:
    try:
        with open(path) as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu(pid: int) -> tuple[float, float] | None:
    """(own, reaped children's) CPU seconds of a process so far."""
    f = _stat(f"/proc/{pid}/stat")
    if f is None:
        return None
    return (int(f[11]) + int(f[12])) / TICKS, (int(f[13]) + int(f[14])) / TICKS


def threads(pid: int) -> dict[int, tuple[int, float]]:
    """tid -> (start time in ticks since boot, CPU seconds) of each thread of `pid`."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            f = _stat(f"/proc/{pid}/task/{tid}/stat")
            if f is not None:
                out[int(tid)] = (int(f[19]), (int(f[11]) + int(f[12])) / TICKS)
    return out


def memory_mib(pid: int, key: str = "VmRSS", path: str = "status") -> float | None:
    """A `kB` field of /proc/PID/status (VmRSS) or smaps_rollup (Pss), in MiB."""
    try:
        with open(f"/proc/{pid}/{path}") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def processes_of(lab: Path) -> dict[int, list[str]]:
    """Every process that names the lab in its command line or works in it (agents,
    CLI turns, trials)."""
    needle = str(lab)
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = [a for a in fh.read().decode(errors="replace").split("\0") if a]
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd.startswith(needle) or any(needle in arg for arg in argv):
            out[int(entry.name)] = argv
    return out


def agent_pids(lab: Path) -> list[int]:
    """The `overnight agent WORKTREE` processes of the lab."""
    return [
        pid
        for pid, argv in processes_of(lab).items()
        if argv[:4] == [sys.executable, "-m", "overnight", "agent"]
    ]


def turns_in_flight(lab: Path) -> int:
    return sum(str(STANDIN) in argv for argv in processes_of(lab).values())


class Tmux:
    """The benchmark's own tmux server (`tmux -L overnight` under a private TMUX_TMPDIR)."""

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self.socket = tmpdir / f"tmux-{os.getuid()}" / "overnight"

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, env={}
        )

    def server_pid(self) -> int | None:
        proc = self.call("display-message", "-p", "#{pid}")
        return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None

    def sessions(self) -> list[str]:
        proc = self.call("list-sessions", "-F", "#{session_name}")
        return proc.stdout.split() if proc.returncode == 0 else []

    def kill_server(self) -> None:
        self.call("kill-server")
        self.socket.unlink(missing_ok=True)


# --- measuring ------------------------------------------------------------------------------


class Reader(threading.Thread):
    """When each `agent.state` event first becomes readable: a plain SQLite reader, which
    in WAL mode never waits for or takes the write lock, polling every READ_EVERY_S."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=60)
        last = 0
        query = "SELECT id FROM ov_events WHERE id > ? AND kind = 'agent.state' ORDER BY id"
        try:
            while not self.stop.wait(READ_EVERY_S):
                rows = conn.execute(query, (last,)).fetchall()
                now = time.time()
                for (event_id,) in rows:
                    self.seen[event_id] = now
                    last = event_id
        finally:
            conn.close()


@dataclass
class Snapshot:
    at: float
    run: tuple[float, float]
    run_threads: dict[int, tuple[int, float]]
    agents: dict[int, tuple[float, float]]
    tmux: tuple[float, float]
    me: tuple[float, float]
    machine: tuple[int, int]


def snapshot(run_pid: int, lab: Path, tmux_pid: int | None) -> Snapshot:
    agents = {pid: c for pid in agent_pids(lab) if (c := cpu(pid)) is not None}
    return Snapshot(
        at=time.time(),
        run=cpu(run_pid) or (0.0, 0.0),
        run_threads=threads(run_pid),
        agents=agents,
        tmux=(cpu(tmux_pid) if tmux_pid else None) or (0.0, 0.0),
        me=cpu(os.getpid()) or (0.0, 0.0),
        machine=machine_ticks(),
    )


def cpu_shares(before: Snapshot, after: Snapshot, agents: int) -> dict[str, float]:
    """% of one core used by each part between two snapshots."""
    seconds = after.at - before.at

    def share(delta: float) -> float:
        return 100 * delta / seconds

    # The agent-supervision threads are the last `agents` threads `overnight run` starts
    # (after the gateway's); Python 3.11 gives threads no names the OS can see.
    order = sorted(before.run_threads, key=lambda tid: (before.run_threads[tid][0], tid))
    supervision = order[-agents:]
    both = before.agents.keys() & after.agents.keys()
    shares = {
        "run": share(after.run[0] - before.run[0]),
        "run children": share(after.run[1] - before.run[1]),
        "agents": share(sum(after.agents[p][0] - before.agents[p][0] for p in both)),
        "agent turns": share(sum(after.agents[p][1] - before.agents[p][1] for p in both)),
        "tmux server": share(after.tmux[0] - before.tmux[0]),
        "benchmark": share(sum(after.me) - sum(before.me)),
    }
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    ours = sum(shares.values())
    shares["machine"] = 100 * CORES * busy / total if total else math.nan
    shares["others"] = shares["machine"] - ours
    shares["supervision threads"] = share(
        sum(after.run_threads.get(t, (0, 0.0))[1] - before.run_threads[t][1] for t in supervision)
    )
    return shares


@dataclass
class Result:
    agents: int
    rest: dict[str, float] = field(default_factory=dict)
    """% of one core while every agent waits mid-turn."""
    busy: dict[str, float] = field(default_factory=dict)
    """% of one core while the agents turn."""
    window: float = 0.0
    turns: int = 0
    stamped: list[float] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)
    unmatched: int = 0
    not_idle: int = 0
    request: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)
    run_rss: float = math.nan
    run_threads: int = 0
    tmux_rss: float = math.nan
    startup_s: float = 0.0
    stop_s: float = 0.0
    exit_code: int | None = None
    restarted: int = 0
    leftovers: list[str] = field(default_factory=list)


def wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SystemExit(f"overnight run exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:g} s\n{tail(log)}")
        time.sleep(0.5)


def idle_agents(lab: Path) -> tuple[str | None, int]:
    """The run's id and how many of its agents have ended a turn."""
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("noop")
        if run is None:
            return None, 0
        idle = {
            e.agent
            for e in store.events(run.id, limit=1_000_000)
            if e.kind == "agent.state" and e.payload.get("state") == "idle"
        }
        return str(run.id), len(idle)
    finally:
        store.close()


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def measure(agents: int, window: float, url: str, work: Path, tmux: Tmux) -> Result:
    result = Result(agents)
    lab = make_lab(work / f"lab-{agents}", agents, url)
    turns_file = work / f"turns-{agents}.log"
    gate = work / f"gate-{agents}"
    gate.touch()
    log = work / f"run-{agents}.log"
    env = {
        **os.environ,
        "OVERNIGHT_CLAUDE": str(standin_wrapper(work)),
        "OVERNIGHT_BENCH_TURNS": str(turns_file),
        "OVERNIGHT_BENCH_GATE": str(gate),
        "TMUX_TMPDIR": str(tmux.tmpdir),
    }
    env.pop("OVERNIGHT_DB", None)  # the lab's own SQLite file
    reader = Reader(lab / ".overnight" / "overnight.db")
    limit = 60 + 3 * agents
    with open(gate) as gate_fh, open(log, "wb") as out:
        fcntl.flock(gate_fh, fcntl.LOCK_EX)  # closed: every turn waits for its model
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "overnight", "run", str(lab)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
            start_new_session=True,  # a Ctrl-C reaches it once, from the finally below
        )
        try:
            every = "every agent in its first turn"
            wait_for(every, lambda: turns_in_flight(lab) >= agents, proc, log, limit)
            result.startup_s = time.monotonic() - started
            time.sleep(1.0)  # the last stand-ins to start reach the gate
            tmux_pid = tmux.server_pid()
            before = snapshot(proc.pid, lab, tmux_pid)
            time.sleep(REST_S)
            result.rest = cpu_shares(before, snapshot(proc.pid, lab, tmux_pid), agents)

            fcntl.flock(gate_fh, fcntl.LOCK_UN)
            every = "every agent idle once"
            wait_for(every, lambda: idle_agents(lab)[1] >= agents, proc, log, limit)
            run_id = idle_agents(lab)[0]
            reader.start()
            time.sleep(WARMUP_S)
            before = snapshot(proc.pid, lab, tmux_pid)
            time.sleep(window)
            after = snapshot(proc.pid, lab, tmux_pid)
            result.busy = cpu_shares(before, after, agents)
            result.restarted = len(after.agents.keys() - before.agents.keys())
            memory(result, proc.pid, after, tmux_pid)
            time.sleep(DRAIN_S)
        finally:
            stopping = time.monotonic()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                result.leftovers.append("overnight run did not stop within 120 s of SIGINT")
            result.stop_s = time.monotonic() - stopping
            result.exit_code = proc.returncode
            if reader.is_alive():
                reader.stop.set()
                reader.join()
            clean_up(result, lab, tmux)
    assert run_id is not None
    latencies(result, lab, run_id, turns_file, before.at, after.at, reader.seen)
    return result


def memory(result: Result, run_pid: int, at: Snapshot, tmux_pid: int | None) -> None:
    for pid in at.agents:
        rss, pss = memory_mib(pid), memory_mib(pid, "Pss", "smaps_rollup")
        if rss is not None:
            result.rss.append(rss)
        if pss is not None:
            result.pss.append(pss)
    result.run_rss = memory_mib(run_pid) or math.nan
    result.run_threads = len(at.run_threads)
    if tmux_pid:
        result.tmux_rss = memory_mib(tmux_pid) or math.nan


def latencies(
    result: Result,
    lab: Path,
    run_id: str,
    turns_file: Path,
    start: float,
    end: float,
    seen: dict[int, float],
) -> None:
    """Match each turn that ended in the window with its agent's next recorded state."""
    store = open_store(store_url(lab))
    try:
        events = [e for e in store.events(run_id, limit=10_000_000) if e.kind == "agent.state"]
    finally:
        store.close()
    states: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for e in events:
        states[str(e.agent)].append((e.at, e.id, str(e.payload.get("state"))))
    for agent_states in states.values():
        agent_states.sort()
    result.window = end - start
    for line in turns_file.read_text().splitlines():
        agent, ended, request = line.split()
        at = float(ended)
        if not start <= at < end:
            continue
        result.turns += 1
        result.request.append(float(request))
        after = states.get(agent, [])
        i = bisect_left(after, (at, -1, ""))
        if i == len(after):
            result.unmatched += 1
            continue
        stamped, event_id, state = after[i]
        if state != "idle":
            result.not_idle += 1
            continue
        result.stamped.append(stamped - at)
        if event_id in seen:
            result.visible.append(seen[event_id] - at)


def clean_up(result: Result, lab: Path, tmux: Tmux) -> None:
    """Check that the stopped run left nothing behind; end whatever it did leave."""
    time.sleep(1.0)
    left = [s for s in tmux.sessions() if s.startswith("ov-")]
    if left:
        result.leftovers.append(f"{len(left)} tmux session(s) left: {left[:3]}")
    procs = processes_of(lab)
    if procs:
        shown = [" ".join(argv)[:120] for argv in list(procs.values())[:3]]
        result.leftovers.append(f"{len(procs)} process(es) left: {shown}")
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    tmux.kill_server()  # overnight keeps an idle server for the next start, by design
    for leftover in result.leftovers:  # now, in case the benchmark is being interrupted
        print(f"N={result.agents}: NOT CLEAN: {leftover}", flush=True)


# --- report ---------------------------------------------------------------------------------


def ms_triple(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
    return f"{p50:.0f} / {p95:.0f} / {max(values) * 1000:.0f}"


def mean_max(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} / {max(values):.1f}" if values else "-"


Cell = Callable[[Result], str] | None


def cpu_rows(phase: str) -> list[tuple[str, Cell]]:
    def pct(key: str) -> Cell:
        return lambda r: f"{getattr(r, phase)[key]:.1f}"

    rows: list[tuple[str, Cell]] = [
        ("  CPU, % of one core: overnight run", pct("run")),
        ("    of which agent-supervision threads", pct("supervision threads")),
        ("    its children (tmux clients, git)", pct("run children")),
        ("    overnight agent processes (sum)", pct("agents")),
    ]
    if phase == "busy":
        rows.append(("    their CLI turns (stand-in, sum)", pct("agent turns")))
    rows += [
        ("    tmux server", pct("tmux server")),
        ("    this process (fake provider, reader)", pct("benchmark")),
        (f"    whole machine ({CORES} cores = {100 * CORES})", pct("machine")),
        ("    of which not this benchmark's", pct("others")),
    ]
    return rows


ROWS: list[tuple[str, Cell]] = [
    (f"at rest: every agent mid-turn, waiting ({REST_S:g} s)", None),
    *cpu_rows("rest"),
    ("turning: a turn, 1 s idle, a nudge, a turn ...", None),
    ("  measured window, s", lambda r: f"{r.window:.1f}"),
    ("  turns ended in it (turns/s)", lambda r: f"{r.turns} ({r.turns / r.window:.1f})"),
    ("  turn end -> idle, stamped: p50/p95/max ms", lambda r: ms_triple(r.stamped)),
    ("    visible to a reader: p50/p95/max ms", lambda r: ms_triple(r.visible)),
    ("    turns matched / not idle / no state", lambda r: f"{len(r.stamped)} / {r.not_idle} / {r.unmatched}"),
    ("  gateway round trip: p50/p95/max ms", lambda r: ms_triple(r.request)),
    *cpu_rows("busy"),
    ("memory, at the end", None),
    ("  overnight agent: RSS mean/max MiB", lambda r: mean_max(r.rss)),
    ("    PSS mean/max MiB", lambda r: mean_max(r.pss)),
    ("  overnight run: RSS MiB (threads)", lambda r: f"{r.run_rss:.1f} ({r.run_threads})"),
    ("  tmux server: RSS MiB", lambda r: f"{r.tmux_rss:.1f}"),
    ("start and stop", None),
    ("  start to every agent in a turn, s", lambda r: f"{r.startup_s:.1f}"),
    ("  SIGINT to exit, s (exit code)", lambda r: f"{r.stop_s:.1f} ({r.exit_code})"),
]  # fmt: skip


def report(results: list[Result]) -> None:
    width = max(len(name) for name, _ in ROWS) + 2
    print(f"\n{'':<{width}}" + "".join(f"{f'N={r.agents}':>18}" for r in results))
    for name, cell in ROWS:
        values = [cell(r) for r in results] if cell is not None else []
        print((f"{name:<{width}}" + "".join(f"{v:>18}" for v in values)).rstrip())
    small, large = results[0], results[-1]
    if large.agents > small.agents:
        per_agent = (large.run_rss - small.run_rss) / (large.agents - small.agents)
        print(
            f"\novernight run memory per agent added (N={small.agents} -> N={large.agents}):"
            f" {per_agent:.2f} MiB"
        )
    for r in results:
        if r.restarted:
            print(f"N={r.agents}: {r.restarted} agent process(es) started during the window")
    if not any(r.leftovers for r in results):
        print("clean-up: no tmux session or process of the benchmark's labs was left behind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="10,50", help="comma-separated N, e.g. 10,50")
    parser.add_argument("--window", type=float, default=40.0, help="measured seconds of turns")
    args = parser.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    exit_on_sigterm()
    # Run in the background by a shell script, this process starts with SIGINT ignored,
    # which `overnight run` would inherit, and the SIGINT that stops it would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(machine_line())
    print(
        f"N = {', '.join(map(str, counts))} claude-code agents (stand-in CLI) on a no-op lab,"
        " gateway -> in-process fake provider"
    )
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="ov-agents-scale-") as tmp,
        FakeProvider("anthropic") as fake,
    ):
        work = Path(tmp)
        tmux = Tmux(work / "tmux")
        tmux.tmpdir.mkdir()
        try:
            for n in counts:
                print(f"N={n} ...", flush=True)
                results.append(measure(n, args.window, fake.url, work, tmux))
        finally:
            tmux.kill_server()
    report(results)


if __name__ == "__main__":
    main()
