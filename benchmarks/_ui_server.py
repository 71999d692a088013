"""Serves the command center alone in this process, for benchmarks/ui_scale.py.

    python benchmarks/_ui_server.py --store URL --run RUN --root LAB --terminals PREFIX

It builds the same `Sources` `overnight run` hands the web layer (the store, the
run, the lab's org config, the agents' tmux sessions) and serves it with
`overnight.web.serving` on a free port of 127.0.0.1 (uvicorn in a background
thread, the event hub tailing the store), without a supervisor: the benchmark
plays the agents by writing to the store itself. Prints `URL <url>` once ready;
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from overnight.org import load_org
from overnight.sessions.tmux import TmuxBackend
from overnight.store import open_store
from overnight.web import Access, CommandCenter, Sources, serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--terminals", default="", help="tmux session name prefix, or none")
    args = parser.parse_args()
    store = open_store(args.store)
    run = store.get_run(args.run)
    assert run is not None, f"no run {args.run}"
    org = load_org(args.root)
    names = [a.name for a in store.agents(run.id)]
    terminals = {n: f"{args.terminals}{n}" for n in names} if args.terminals else {}
    sources = Sources(
        store=store,
        run=run,
        config=org.config,
        root=org.root,
        state_dir=org.root / ".overnight",
        terminals=terminals,
        tmux=TmuxBackend() if terminals else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    center = CommandCenter(sources, Access.for_lab(org.root))
    with serving(center) as served:
        print(f"URL {served.url}", flush=True)
        stop.wait()
    store.close()


if __name__ == "__main__":
    main()
