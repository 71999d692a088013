"""Notifications: how soon an event reaches a webhook, and what a dead sink costs a lab.

1. Event -> webhook delivery on loopback: a real run's store, the notifier of
   `overnight run` (`overnight.notify.Notifier`, its own poll interval) with one
   webhook sink (`min_interval = "0s"`) posting to an HTTP server on 127.0.0.1;
   `agent.state crashed` events written one at a time at random gaps, each timed
   from its write to the receiver's read of the POST that carries it.
2. The lab's trials per second with a dead webhook sink configured against none:
   `overnight run --trials N` of a near-no-op experiment (a random score, so
   there are new bests to tell), alternating between a lab without `[[notify]]`
   and one whose webhook hears every event and points at a listener that never
   answers (every try waits out its timeout, then backs off), round after round.

    .venv/bin/python benchmarks/notify.py [--events 100] [--trials 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _bench import commit_lab, machine_line, percentile

from overnight.notify import Notifier, sinks_of
from overnight.org import load_org
from overnight.org.notify import SinkConfig
from overnight.store import SqlStore, open_store

CONFIG = """\
[lab]
name = "bench"
editable = ["knob.py"]
run = "{run}"
metric = "score"
min_delta = 0
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
{notify}"""

DEAD_SINK = """
[[notify]]
kind = "webhook"
url_env = "BENCH_HOOK"
min_interval = "0s"
"""


def make_lab(root: Path, notify: str = "") -> Path:
    run = f"{sys.executable} -c 'import random; print(\\\"score:\\\", random.random())'"
    return commit_lab(
        root,
        {
            "overnight.toml": CONFIG.format(run=run, notify=notify),
            "knob.py": "X = 0.5\n",
            "program.md": "# bench\n",
        },
    )


def overnight_run(root: Path, trials: int, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "overnight", "run", str(root), "--trials", str(trials), "--no-ui"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"overnight run {root} failed:\n{proc.stderr}")


def store_of(root: Path) -> SqlStore:
    store = open_store(f"sqlite:///{root / '.overnight' / 'overnight.db'}")
    assert isinstance(store, SqlStore)
    return store


# -- 1. event -> delivery ------------------------------------------------------------------------


class Receiver:
    """Keeps the arrival time of every notification it is posted."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                now = time.time()
                receiver.posts += 1
                for item in body["notifications"]:
                    status = int(item["text"].split("exit status ")[1].split(")")[0])
                    receiver.arrived[status] = now
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def delivery(tmp: Path, events: int) -> dict[str, float]:
    lab = make_lab(tmp / "latency")
    overnight_run(lab, 1, {})
    receiver = Receiver()
    store = store_of(lab)
    try:
        run = store.latest_run("bench")
        assert run is not None
        config = load_org(lab).config
        sink = SinkConfig.model_validate(
            {"kind": "webhook", "url": receiver.url, "min_interval": "0s", "events": ["crash"]}
        )
        config = config.model_copy(update={"notify": [sink]})
        notifier = Notifier(store, run, config, sinks_of(config, "overnight.toml"))
        notifier.start()
        written: dict[int, float] = {}
        rng = random.Random(7)
        try:
            for n in range(1, events + 1):
                time.sleep(rng.uniform(0.05, 0.6))
                written[n] = time.time()
                store.set_agent_state(run.id, "tuner", "crashed", exit_status=n)
            deadline = time.monotonic() + 60
            while len(receiver.arrived) < events and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            notifier.close(timeout=10)
        latencies = [receiver.arrived[n] - written[n] for n in written if n in receiver.arrived]
        return {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "max": max(latencies),
            "delivered": len(latencies),
            "posts": receiver.posts,
            "poll": Notifier.POLL_S,
        }
    finally:
        store.close()
        receiver.close()


# -- 2. a dead sink against none -----------------------------------------------------------------


def silent_listener() -> tuple[socket.socket, str]:
    """A port that takes connections into its backlog and never answers them."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/hook/token"


def rate(root: Path, trials: int, env: dict[str, str]) -> tuple[float, float]:
    """(trials/s inside the run, wall seconds of the command) for `trials` more trials."""
    store = store_of(root) if (root / ".overnight" / "overnight.db").exists() else None
    before = 0
    if store is not None:
        run = store.latest_run("bench")
        before = max((t.number for t in store.trials(run.id)), default=0) if run else 0
        store.close()
    started = time.monotonic()
    overnight_run(root, trials, env)
    wall = time.monotonic() - started
    store = store_of(root)
    try:
        run = store.latest_run("bench")
        assert run is not None
        done = [t for t in store.trials(run.id) if t.number > before and t.agent != "baseline"]
    finally:
        store.close()
    ends = sorted(t.finished_at or 0.0 for t in done)
    return (len(ends) - 1) / (ends[-1] - ends[0]), wall


def dead_sink(tmp: Path, trials: int, rounds: int) -> dict[str, Any]:
    plain = make_lab(tmp / "none")
    dead = make_lab(tmp / "dead", DEAD_SINK)
    listener, url = silent_listener()
    env = {"BENCH_HOOK": url}
    try:
        # each lab's baseline and noise runs first, outside the comparison
        overnight_run(plain, 1, {})
        overnight_run(dead, 1, env)
        none_rates, dead_rates, none_wall, dead_wall = [], [], [], []
        for _ in range(rounds):
            r, w = rate(plain, trials, {})
            none_rates.append(r)
            none_wall.append(w)
            r, w = rate(dead, trials, env)
            dead_rates.append(r)
            dead_wall.append(w)
    finally:
        listener.close()
    store = store_of(dead)
    try:
        rows = store.notifications("bench", limit=100_000)
    finally:
        store.close()
    return {
        "none": none_rates,
        "dead": dead_rates,
        "none_wall": none_wall,
        "dead_wall": dead_wall,
        "told": len(rows),
        "statuses": sorted({r.status for r in rows}),
        "error": next((r.error for r in rows if r.error), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        d = delivery(Path(tmp), args.events)
        print(
            f"\nevent -> webhook delivery on loopback ({d['delivered']}/{args.events} events, "
            f"{d['posts']} POSTs, the notifier polls every {d['poll']:g} s):"
        )
        print(
            f"  p50 {d['p50'] * 1000:.0f} ms  p95 {d['p95'] * 1000:.0f} ms  "
            f"max {d['max'] * 1000:.0f} ms"
        )
        s = dead_sink(Path(tmp), args.trials, args.rounds)
    none, dead = statistics.median(s["none"]), statistics.median(s["dead"])
    print(
        f"\ntrials/s of `overnight run --trials {args.trials}` ({args.rounds} rounds, alternating),"
        " a near-no-op experiment:"
    )
    print(f"  no sink:        {' '.join(f'{r:.2f}' for r in s['none'])}  median {none:.2f}")
    print(f"  dead webhook:   {' '.join(f'{r:.2f}' for r in s['dead'])}  median {dead:.2f}")
    print(f"  dead / none:    {dead / none:.3f}")
    print(
        f"  command wall s: no sink {statistics.median(s['none_wall']):.1f}, dead webhook "
        f"{statistics.median(s['dead_wall']):.1f} (its stop waits for the last one try)"
    )
    print(
        f"  the dead sink was told {s['told']} notification(s), now {', '.join(s['statuses'])}"
        f" (last error: {s['error']})"
    )


if __name__ == "__main__":
    main()
