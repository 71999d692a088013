"""Runs the overnight gateway alone in this process, for the benchmarks, as `overnight gateway` does.

    python benchmarks/_gateway_runner.py --port P --config '{"upstreams": [...], "models": {...}}'

The config is the `[gateway]` table as JSON, built in code by the benchmark;
upstream credentials are read from the environment variables it names, and the
one virtual key the benchmark's client presents comes from $BENCH_AGENT_KEY.
As under `overnight gateway` and `overnight run`, the gateway serves from a
background thread (`running_gateway`), every attempt and gateway event is
metered into a SQLite store by `StoreSink` (a fresh store in a temporary
directory, deleted on exit), and `quiet_gc()` runs once it serves. Stops on
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

from overnight.gateway.keys import KeyRing, key_hash
from overnight.gateway.server import quiet_gc, running_gateway
from overnight.gateway.service import StoreSink
from overnight.org.gateway import GatewayConfig
from overnight.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True, help="the [gateway] table as JSON")
    args = parser.parse_args()
    config = GatewayConfig.model_validate({**json.loads(args.config), "host": "127.0.0.1"})
    keys = KeyRing({key_hash(os.environ["BENCH_AGENT_KEY"]): "bench"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="overnight-bench-") as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'overnight.db'}")
        sink = StoreSink(store, "bench", None)
        try:
            with running_gateway(config, keys, sink, sink.event, port=args.port):
                quiet_gc()
                stop.wait()
        finally:
            sink.close()
            store.close()


if __name__ == "__main__":
    main()
