"""The command center at scale: page render time, event-to-browser latency, CPU and memory.

A SQLite store seeded through the Store API with a run of 50 agents, 10,000
trials (each through its real states: proposed ... measured, kept / discarded /
crashed) and 100,000 events in all (agent state changes make up the rest), plus
20,000 metered gateway attempts; 50 tmux sessions, one per agent, on a tmux
server of their own. The command center is served by `_ui_server.py` in its own
process (as `overnight run` serves it: uvicorn in a thread, one event tailer),
so its CPU and memory are its own. This process plays the agents: it writes
events to the store the way agents and the lab do.

Figures, in one run:
- server time per page (the `Server-Timing` header: request in to response head
  out, which is the whole page for these non-streamed pages), p50/p95 over 30
  requests each, and the round trip seen by a client on loopback;
- event-to-browser latency: an `agent.state` event appended to the store (its
  `at` stamp) to the moment the grid page in headless chromium has the tile's
  new header in its DOM (`Date.now()` in the page, same clock), p50/p95 over
  ~200 events written at 10/s while the 50 terminal mirrors stream;
- the command center's CPU (% of one core; its own threads plus the tmux client
  calls it makes) and the tmux server's, with the grid page open: at rest (50
  idle terminals, no events) and streaming (every terminal printing a line a
  second, 10 events/s); RSS of the command center;
- the terminal mirror's cost per tick against the naive way (capture every pane
  every tick), measured on the same 50 sessions.

The seeded store is cached in build/bench/ui-scale/ (seeding takes a minute or two).

    .venv/bin/python benchmarks/ui_scale.py [--agents 50] [--trials 10000] [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _bench import commit_lab, exit_on_sigterm, machine_line, percentile

from overnight.records import AgentRecord
from overnight.records import TrialStatus as S
from overnight.store import SqlStore, open_store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / "build" / "bench" / "ui-scale"
SERVER = HERE / "_ui_server.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TICKS = os.sysconf("SC_CLK_TCK")
RUN_ID = "20260101-000000"
SEED_VERSION = 2
PREFIX = "uis-"

CONFIG = """\
[lab]
name = "uiscale"
editable = ["train.py"]
run = "python train.py"
metric = "val_loss"

[[agents]]
name = "a"
runtime = "claude-code"
model = "smart"
count = {agents}

[gateway]
port = 0

[[gateway.upstreams]]
name = "fake"
protocol = "anthropic"
base_url = "http://127.0.0.1:9"

[gateway.models]
smart = ["fake/claude-fake-1"]

[gateway.budgets]
org = {{ daily_usd = 500 }}
agent = {{ total_usd = 40 }}
"""

DIFF = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
-LR = {old}
+LR = {new}
 EPOCHS = 10
"""


# -- seeding -----------------------------------------------------------------------------------


def seed(folder: Path, agents: int, trials: int, events: int) -> Path:
    """A lab directory whose store holds the run; cached by its size."""
    lab = folder / "lab"
    done = folder / "seeded"
    if done.is_file():
        return lab
    shutil.rmtree(folder, ignore_errors=True)
    commit_lab(lab, {"overnight.toml": CONFIG.format(agents=agents), "train.py": "LR = 0.1\n",
                     "program.md": "# ui scale\n"})  # fmt: skip
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=lab, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    store = open_store(f"sqlite:///{lab / '.overnight' / 'overnight.db'}")
    started = time.monotonic()
    rng = random.Random(7)
    store.create_run(RUN_ID, "uiscale", base, {}, {})
    names = [f"a-{i}" for i in range(1, agents + 1)]
    for name in names:
        store.put_agent(AgentRecord(RUN_ID, name, "claude-code", f"overnight/{RUN_ID}/{name}",
                                    str(lab / ".overnight" / "worktrees" / RUN_ID / name), base))  # fmt: skip
    best = {n: 3.0 for n in names}
    per_trial = 6
    state_events = max(0, events - trials * per_trial - agents)
    states_every = trials / state_events if state_events else float("inf")
    next_state, written = 0.0, 0
    attempts = []
    for i in range(trials):
        name = names[i % agents]
        old = best[name]
        metric = old * rng.uniform(0.97, 1.08)
        t = store.add_trial(RUN_ID, name, base, f"lr {old:.4f} -> {metric:.4f}", {"via": "seed"})
        commit = f"{rng.getrandbits(160):040x}"
        store.update_trial(t.id, S.applied, candidate_commit=commit,
                           diff=DIFF.format(old=old, new=metric))  # fmt: skip
        store.update_trial(t.id, S.checked)
        store.update_trial(t.id, S.running, started_at=time.time())
        if rng.random() < 0.12:
            store.update_trial(t.id, S.crashed, reason="exit 1", log_tail="Traceback ...\n",
                               duration_s=3.0, finished_at=time.time())  # fmt: skip
        else:
            store.update_trial(t.id, S.measured, metric=metric, duration_s=60.0)
            if metric < old:
                best[name] = metric
                store.update_trial(t.id, S.kept, finished_at=time.time())
            else:
                store.update_trial(t.id, S.discarded, reason="not better",
                                   finished_at=time.time())  # fmt: skip
        for _ in range(3):
            attempts.append(_attempt(name, str(t.number), rng))
        while next_state <= i and written < state_events:
            store.set_agent_state(RUN_ID, names[written % agents],
                                  rng.choice(["working", "idle", "waiting"]))  # fmt: skip
            written += 1
            next_state += states_every
        if len(attempts) >= 2000:
            store.record_attempts("uiscale", RUN_ID, attempts)
            attempts = []
        if i % 1000 == 999:
            print(f"  seeded {i + 1} trials ({time.monotonic() - started:.0f} s)", flush=True)
    if attempts:
        store.record_attempts("uiscale", RUN_ID, attempts)
    total = len(store.events(RUN_ID, limit=10_000_000))
    while total < events:  # exactly `events` in all
        store.set_agent_state(RUN_ID, names[total % agents], "idle")
        total += 1
    store.close()
    done.write_text(json.dumps({"events": total, "seconds": time.monotonic() - started}))
    return lab


def _attempt(agent: str, trial: str, rng: random.Random) -> dict[str, object]:
    inp, out = rng.randint(2000, 20000), rng.randint(100, 2000)
    return {
        "request_id": f"{rng.getrandbits(64):016x}", "attempt": 1, "agent": agent, "trial": trial,
        "route": "smart", "upstream": "fake", "model": "claude-fake-1", "credential": "main",
        "client_protocol": "anthropic", "upstream_protocol": "anthropic", "stream": True,
        "outcome": "ok", "status": 200, "error": None,
        "started_at": time.time() - rng.uniform(0, 86400 * 2), "latency_s": 1.2, "ttft_s": 0.4,
        "input_tokens": inp, "output_tokens": out, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "usage_estimated": False,
        "cost_usd": inp * 3e-6 + out * 15e-6, "unpriced": False,
    }  # fmt: skip


# -- processes ---------------------------------------------------------------------------------


def cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children included."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tmux_server_pid(socket_path: Path) -> int:
    out = subprocess.run(["tmux", "-S", str(socket_path), "display-message", "-p", "#{pid}"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.strip())


def start_terminals(backend: object, names: list[str], flag: Path, cwd: Path) -> None:
    """One tmux session per agent; each prints a line a second while `flag` exists."""
    from overnight.sessions.tmux import TmuxBackend

    assert isinstance(backend, TmuxBackend)
    loop = (
        'i=0; while :; do if [ -e "$FLAG" ]; then i=$((i+1)); '
        'printf "\\033[32m%s\\033[0m step %d: loss %s\\n" "$NAME" "$i" "0.$$$i"; fi; sleep 1; done'
    )
    for name in names:
        backend.start(f"{PREFIX}{name}", ["/bin/sh", "-c", loop], cwd,
                      {"FLAG": str(flag), "NAME": name, "PATH": os.environ["PATH"]})  # fmt: skip


# -- measurements ------------------------------------------------------------------------------


def render_times(base: str, token: str, pages: list[str], n: int) -> list[tuple[str, ...]]:
    rows = []
    with httpx.Client(base_url=base, timeout=60) as client:
        client.get(f"/?token={token}", follow_redirects=False)
        for page in pages:
            for _ in range(3):
                client.get(page).raise_for_status()  # warm
            server, wall, size = [], [], 0
            for _ in range(n):
                t0 = time.perf_counter()
                r = client.get(page)
                wall.append(time.perf_counter() - t0)
                r.raise_for_status()
                size = len(r.content)
                timing = r.headers["server-timing"]
                server.append(float(timing.split("dur=")[1]) / 1000)
            rows.append((page, _ms(percentile(server, 50)), _ms(percentile(server, 95)),
                         _ms(percentile(wall, 50)), _ms(percentile(wall, 95)), f"{size / 1024:.0f}"))  # fmt: skip
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


class Writer:
    """Plays the agents: state changes (marked, for latency) and trials, at `rate` events/s."""

    def __init__(self, store: SqlStore, names: list[str], rate: float) -> None:
        self.store = store
        self.names = names
        self.rate = rate
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0

    def _run(self) -> None:
        rng = random.Random(11)
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            i += 1
            name = self.names[i % len(self.names)]
            if i % 4 == 0:  # a trial moving, as agents' trials do
                t = self.store.add_trial(RUN_ID, name, "0" * 40, f"bench trial {i}", {})
                self.store.update_trial(t.id, S.crashed, reason="bench", finished_at=time.time())
                self.count += 2
            else:
                mark = f"bench-{i}"
                self.store.set_agent_state(RUN_ID, name, rng.choice(["working", "idle"]),
                                           reason=mark)  # fmt: skip
                self.sent[mark] = time.time()
                self.count += 1
            next_at += 1 / self.rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per CPU phase")
    parser.add_argument("--rate", type=float, default=10.0, help="events/s while streaming")
    args = parser.parse_args()
    exit_on_sigterm()
    print(machine_line())
    folder = CACHE / f"v{SEED_VERSION}-{args.agents}-{args.trials}-{args.events}"
    print(f"seeding (cached in {folder.relative_to(ROOT)}) ...", flush=True)
    seeded = seed(folder, args.agents, args.trials, args.events)
    work = Path(tempfile.mkdtemp(prefix="ui-scale-"))
    lab = work / "lab"
    shutil.copytree(seeded, lab)
    db = f"sqlite:///{lab / '.overnight' / 'overnight.db'}"
    store = open_store(db)
    assert isinstance(store, SqlStore)
    names = [a.name for a in store.agents(RUN_ID)]
    n_trials = len(store.trials(RUN_ID))
    n_events = len(store.events(RUN_ID, limit=10_000_000))
    print(f"store: {len(names)} agents, {n_trials} trials, {n_events} events, SQLite")

    tmpdir = work / "tmux"
    tmpdir.mkdir(mode=0o700)
    os.environ["TMUX_TMPDIR"] = str(tmpdir)  # a tmux server of our own
    from overnight.sessions.tmux import TmuxBackend
    from overnight.web.terminals import Mirror

    backend = TmuxBackend(state_dir=work / "sessions")
    flag = work / "streaming"
    start_terminals(backend, names, flag, lab)
    from overnight.web.charts import metric_plot
    from overnight.web.live import LiveRun

    run = store.get_run(RUN_ID)
    assert run is not None
    live = LiveRun(RUN_ID, run.base_commit, run.created_at, {}, {})
    live.load(store.agents(RUN_ID), store.trials(RUN_ID))
    ordered = live.ordered_trials()
    t0 = time.perf_counter()
    for _ in range(10):
        svg = metric_plot(ordered, "val_loss", "minimize")
    fresh_plot = (time.perf_counter() - t0) / 10
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--store", db, "--run", RUN_ID, "--root", str(lab),
         "--terminals", PREFIX],
        stdout=subprocess.PIPE, text=True, env={**os.environ}, start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("URL "):
            raise SystemExit(f"the command center did not start: {line!r}")
        url = line.split()[1]
        base, token = url.split("/?token=")
        with httpx.Client(base_url=base, timeout=120) as client:
            client.get(f"/?token={token}", follow_redirects=True).raise_for_status()
        ready = time.monotonic() - started
        print(f"command center: pid {server.pid}; first page {ready:.1f} s after start "
              f"(reads the whole run once); RSS {rss_mb(server.pid):.0f} MB")  # fmt: skip
        print(f"plot of {len(ordered)} trials drawn afresh: {fresh_plot * 1000:.1f} ms, "
              f"{len(svg) / 1024:.0f} KB (pages reuse it until a trial moves)")  # fmt: skip

        # -- 1. pages
        pages = ["/", "/lab", "/providers", "/costs", "/grid/tiles", "/lab/ledger?agent=a-7",
                 "/lab/plot", f"/trials/{n_trials // 2}"]  # fmt: skip
        rows = render_times(base, token, pages, 30)
        print("\nserver time per page (target p95 <= 150 ms), 30 requests each:")
        print(
            f"  {'page':<24} {'server p50':>10} {'p95':>7} {'round trip p50':>15} {'p95':>7} {'KB':>6}"
        )
        for r in rows:
            print(f"  {r[0]:<24} {r[1]:>10} {r[2]:>7} {r[3]:>15} {r[4]:>7} {r[5]:>6}")

        # -- 2. the mirror's tick against the naive way
        mirror = Mirror(backend, {n: f"{PREFIX}{n}" for n in names})
        mirror.tick()
        ticks = 40
        t0 = time.perf_counter()
        for _ in range(ticks):
            mirror.tick()
        ours_idle = (time.perf_counter() - t0) / ticks
        t0 = time.perf_counter()
        for _ in range(ticks):
            backend.capture_many([f"{PREFIX}{n}" for n in names])
        naive = (time.perf_counter() - t0) / ticks

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('conn').dataset.state === 'live'")
            tiles = page.eval_on_selector_all(".tile", "ts => ts.length")
            page.evaluate("""() => {
                window.__got = {};
                window.overnightEvents.addEventListener('agent', (m) => {
                    const d = JSON.parse(m.data);
                    const hit = d.html.match(/bench-\\d+/);
                    if (hit && !(hit[0] in window.__got)) window.__got[hit[0]] = Date.now() / 1000;
                });
            }""")  # fmt: skip

            # -- 3. at rest: 50 idle terminals, no events
            time.sleep(3)
            tmux_pid = tmux_server_pid(backend.path)
            c0, t0s, w0 = cpu(server.pid), cpu(tmux_pid), time.monotonic()
            time.sleep(args.window)
            wall = time.monotonic() - w0
            rest = ((cpu(server.pid) - c0) / wall * 100, (cpu(tmux_pid) - t0s) / wall * 100)

            # -- 4. streaming: every terminal prints, 10 events/s; latency sampled meanwhile
            flag.touch()
            time.sleep(2)
            mirror.tick()
            t0 = time.perf_counter()
            for _ in range(10):
                mirror.tick()
            ours_busy = (time.perf_counter() - t0) / 10
            writer = Writer(store, names, args.rate)
            c0, t0s, w0 = cpu(server.pid), cpu(tmux_pid), time.monotonic()
            writer.thread.start()
            time.sleep(args.window)
            wall = time.monotonic() - w0
            busy = ((cpu(server.pid) - c0) / wall * 100, (cpu(tmux_pid) - t0s) / wall * 100)
            writer.stop.set()
            writer.thread.join()
            time.sleep(1.5)
            got = page.evaluate("window.__got")
            screens = page.eval_on_selector_all(
                ".screen", "ss => ss.filter(s => s.textContent.includes('step')).length"
            )
            rss = rss_mb(server.pid)
            browser.close()
        lat = [got[m] - at for m, at in writer.sent.items() if m in got]
        lost = len(writer.sent) - len(lat)
        print(f"\nevent to browser (target p95 <= 500 ms): {len(lat)} agent.state events at "
              f"{args.rate:g} events/s, 50 terminals streaming, {tiles} tiles open")  # fmt: skip
        print(f"  p50 {_ms(percentile(lat, 50))} ms · p95 {_ms(percentile(lat, 95))} ms · "
              f"max {_ms(max(lat) if lat else float('nan'))} ms · "
              f"mean {_ms(statistics.fmean(lat) if lat else float('nan'))} ms · not seen {lost}")  # fmt: skip
        print(f"  tiles whose mirror showed the streamed lines: {screens}/{tiles}")
        print("\nCPU, % of one core (target: command center < 100), grid page open:")
        print(f"  at rest (50 idle terminals, no events):   command center {rest[0]:5.1f} · "
              f"tmux server {rest[1]:5.1f}")  # fmt: skip
        print(f"  streaming (50 terminals, {writer.count / args.window:.1f} events/s): command center "
              f"{busy[0]:5.1f} · tmux server {busy[1]:5.1f}")  # fmt: skip
        print(f"  command center RSS at the end: {rss:.0f} MB")
        print("\nterminal mirror, one tick over 50 sessions (ms):")
        print(f"  ours, idle terminals {ours_idle * 1000:.1f} · ours, all streaming "
              f"{ours_busy * 1000:.1f} · naive capture of every pane {naive * 1000:.1f} "
              f"(idle: {naive / ours_idle:.1f}x less work with change detection)")  # fmt: skip
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        backend.kill_server()
        store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
