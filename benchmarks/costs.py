"""Cost intelligence at scale: `overnight costs`, the Costs page and the morning report.

A store seeded as `ui_scale.py` seeds it (a run of 10,000 trials and 100,000 events,
cached under build/bench/ui-scale) gets 1,000,000 metered attempts on top (over 20
agents, 3 routes, 2 upstreams, two days; cached under build/bench/costs). Then:

1. `overnight.costs.overview` in-process (what `overnight costs --json` prints): the
   first call, which folds every attempt into the hourly rollup, then the p50 of
   later calls (each folds only what is new: nothing here). Target p50 <= 200 ms.
2. `overnight costs --json` as a user runs it (a subprocess: Python's start and imports
   included; target p50 <= 200 ms), p50/p95 of wall and CPU time (user + system: on a
   machine shared with other work, the steadier figure), beside baselines run in turn
   with it: `python -c pass`, the imports of the quick answer (`overnight.cli.quick`:
   the costs package, the store's direct reader, sqlite3), the imports of the app,
   which every other command that reads a lab needs (typer, rich, the config's pydantic
   models, the store's SQLAlchemy), `overnight --help` and `overnight status`. First,
   once: `overnight costs --json` in a lab without the saved costs' part of its config
   (the first ask after overnight.toml changed: the app answers, validating the config,
   and saves it); every later run answers from the copy, as a user's next asks do.
   `--against DIR` runs them with the overnight package of another checkout too (DIR on
   PYTHONPATH): before and after a change, in one run.
3. The Costs page over HTTP on loopback, served by `_ui_server.py` (the command
   center alone). Target p50 <= 200 ms.
4. The morning report (`overnight.lab.report.write`: HTML, Markdown and the plot) on
   the 10,000 trials and 100,000 events. Target <= 5 s.

SQLite here; PostgreSQL reads the same rollup with the same SQL (`OVERNIGHT_DB`).

    .venv/bin/python benchmarks/costs.py [--attempts 1000000] [--repeat 20] [--runs 10]
                                         [--against ../main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _bench import exit_on_sigterm, machine_line, percentile
from ui_scale import CACHE, RUN_ID, SERVER, seed

from overnight.costs.overview import overview
from overnight.lab import report
from overnight.lab.ledger import open_view
from overnight.store import open_store

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "build" / "bench" / "costs"
ROUTES = (("smart", "fake", "claude-fake-1"), ("fast", "fake", "claude-fake-2"),
          ("cheap", "backup", "gpt-fake-1"))  # fmt: skip
FIELDS = (
    "request_id", "attempt", "agent", "trial", "route", "upstream", "model", "credential",
    "client_protocol", "upstream_protocol", "stream", "outcome", "status", "error",
    "started_at", "latency_s", "ttft_s", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_estimated", "cost_usd", "unpriced",
)  # fmt: skip


def seed_attempts(n: int) -> Path:
    """The ui-scale lab with `n` more attempts; cached by size."""
    folder = HERE / f"v1-{n}"
    lab = folder / "lab"
    if (folder / "seeded").is_file():
        return lab
    shutil.rmtree(folder, ignore_errors=True)
    base = seed(CACHE / "v2-50-10000-100000", 50, 10_000, 100_000)
    shutil.copytree(base, lab)
    store = open_store(f"sqlite:///{lab / '.overnight' / 'overnight.db'}")
    rng = random.Random(11)
    names = [a.name for a in store.agents(RUN_ID)][:20]
    now = time.time()
    started = time.monotonic()
    batch: list[tuple[object, ...]] = []
    for i in range(n):
        route, upstream, model = ROUTES[i % 3]
        inp, out, cached = rng.randint(500, 8000), rng.randint(50, 1500), rng.randint(0, 20000)
        failed = rng.random() < 0.01
        batch.append((
            f"{i:016x}", 2 if failed else 1, names[i % len(names)], str(rng.randint(1, 10_000)),
            route, upstream, model, "main", "anthropic", "anthropic", True, "ok", 200, None,
            now - rng.uniform(0, 86400 * 2), 1.1, 0.3, inp, out, cached, 0, 0, False,
            inp * 3e-6 + out * 15e-6 + cached * 3e-7, False,
        ))  # fmt: skip
        if len(batch) == 20_000:
            store.record_attempt_rows("uiscale", RUN_ID, batch)
            batch = []
    if batch:
        store.record_attempt_rows("uiscale", RUN_ID, batch)
    store.close()
    (folder / "seeded").write_text(json.dumps({"seconds": time.monotonic() - started}))
    return lab


def p50(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f} ms"


FLOOR = "import typer, rich.console, overnight.org, overnight.store.sql"
"""What every command the app answers imports before it reads a lab."""
QUICK = "import sqlite3, overnight.cli.quick, overnight.costs.overview, overnight.store.direct"
"""What `overnight costs` imports when `overnight.cli.quick` answers it."""


def commands(lab: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    return {
        "overnight costs --json": [*py, "-m", "overnight", "costs", str(lab), "--json"],
        "overnight status": [*py, "-m", "overnight", "status", str(lab)],
        "overnight --help": [*py, "-m", "overnight", "--help"],
        "python -c pass": [*py, "-c", "pass"],
        "the quick imports": [*py, "-c", QUICK],
        "the app's imports": [*py, "-c", FLOOR],
    }


def subprocesses(
    lab: Path, runs: int, code: str | None
) -> dict[str, tuple[list[float], list[float]]]:
    """Each command `runs` times, in turn (so a change in the machine's load falls on all
    alike): (wall seconds, CPU seconds) of each run. `code`: a checkout whose overnight
    package is imported instead."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code
    cmds = commands(lab)
    if code is not None and not (Path(code) / "overnight" / "cli" / "quick.py").is_file():
        del cmds["the quick imports"]  # a checkout from before the quick answer
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=lab)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
            out[name][0].append(wall)
            out[name][1].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return out


def first_ask(lab: Path, code: str | None) -> float:
    """`overnight costs --json` once, without the saved costs' part of the config: seconds."""
    (lab / ".overnight" / "costs-config.json").unlink(missing_ok=True)
    env = dict(os.environ) if code is None else {**os.environ, "PYTHONPATH": code}
    t0 = time.perf_counter()
    subprocess.run(commands(lab)["overnight costs --json"], capture_output=True, check=True,
                   env=env, cwd=lab)  # fmt: skip
    return time.perf_counter() - t0


def show(figures: dict[str, tuple[list[float], list[float]]], runs: int) -> None:
    for name, (wall, cpu) in figures.items():
        print(f"   {name:24} wall p50 {statistics.median(wall) * 1000:5.0f} ms, "
              f"p95 {percentile(wall, 95) * 1000:5.0f} ms · CPU p50 "
              f"{statistics.median(cpu) * 1000:4.0f} ms, p95 {percentile(cpu, 95) * 1000:4.0f} ms"
              f" (over {runs})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--runs", type=int, default=10, help="runs of each subprocess")
    parser.add_argument("--against", type=Path, help="another checkout, run beside this one")
    args = parser.parse_args()
    exit_on_sigterm()
    print(machine_line())
    print("seeding (cached under build/bench) ...", flush=True)
    seeded = seed_attempts(args.attempts)
    work = Path(tempfile.mkdtemp(prefix="costs-bench-"))
    lab = work / "lab"
    shutil.copytree(seeded, lab)
    db = f"sqlite:///{lab / '.overnight' / 'overnight.db'}"
    try:
        view = open_view(lab)
        store, run, config = view.store, view.run, view.config
        n_attempts = len(store.attempts("uiscale", limit=10_000_000))
        n_trials = len(store.trials(run.id))
        n_events = len(store.events(run.id, limit=10_000_000))
        print(f"store: {n_attempts:,} attempts, {n_trials:,} trials, {n_events:,} events, SQLite")

        t0 = time.perf_counter()
        first = overview(store, config, run).as_dict()
        fold = time.perf_counter() - t0
        print(f"\n1. overnight.costs.overview, first call (folds {n_attempts:,} attempts into "
              f"the hourly rollup): {fold * 1000:.0f} ms")  # fmt: skip
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            json.dumps(overview(store, config, run).as_dict())
            samples.append(time.perf_counter() - t0)
        print(f"   later calls (target p50 <= 200 ms): p50 {p50(samples)}, "
              f"max {max(samples) * 1000:.0f} ms over {args.repeat}; "
              f"{len(first['agents'])} agents, {len(first['routes'])} routes, "
              f"${first['total']['usd']:,.2f}")  # fmt: skip

        print("2. `overnight costs --json` as a subprocess (target p50 <= 200 ms), beside "
              f"its baselines; load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"   the first ask after overnight.toml changed (the app answers and saves the "
              f"config's costs' part): {first_ask(lab, None) * 1000:.0f} ms")  # fmt: skip
        show(subprocesses(lab, args.runs, None), args.runs)
        if args.against is not None:
            print(f"   the same with the overnight package of {args.against}:")
            show(subprocesses(lab, args.runs, str(args.against.resolve())), args.runs)
        print(f"   load average now {os.getloadavg()[0]:.1f}")

        server = subprocess.Popen(
            [sys.executable, str(SERVER), "--store", db, "--run", run.id, "--root", str(lab)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("URL "):
                raise SystemExit(f"the command center did not start: {line!r}")
            base, token = line.split()[1].split("/?token=")
            with httpx.Client(base_url=base, timeout=300) as client:
                t0 = time.perf_counter()
                # 503 until the hub has read the run once
                while client.get(f"/?token={token}", follow_redirects=True).status_code == 503:
                    time.sleep(0.5)
                client.get("/costs").raise_for_status()
                ready = time.perf_counter() - t0
                page = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    r = client.get("/costs")
                    page.append(time.perf_counter() - t0)
                    r.raise_for_status()
            assert 'class="spend"' in r.text
            print(f"3. the Costs page over HTTP (target p50 <= 200 ms): p50 {p50(page)}, "
                  f"max {max(page) * 1000:.0f} ms over {args.repeat}, {len(r.content) // 1024} KB; "
                  f"first page {ready:.1f} s after start (the hub reads the run once)")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)

        times = []
        for i in range(3):
            t0 = time.perf_counter()
            path = report.write(view, work / f"report-{i}.md")
            times.append(time.perf_counter() - t0)
        size = path.with_suffix(".html").stat().st_size
        print(f"4. the morning report on {n_trials:,} trials and {n_events:,} events "
              f"(target <= 5 s): p50 {statistics.median(times):.2f} s over 3; HTML "
              f"{size // 1024} KB, Markdown {path.stat().st_size // 1024} KB")  # fmt: skip
        view.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
