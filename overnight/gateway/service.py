"""The gateway wired to a lab: virtual keys, metering, budgets and events kept in the store.

Owns what `overnight gateway` and `overnight run` share: each agent's virtual
key (the key in a 0600 file under `.overnight/keys/`, only its hash in the
store), a sink that moves attempts and gateway events off the event loop into
the store, and budgets seeded from what the store says was already spent.
Knows nothing about the CLI or how agents use their keys.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overnight import redaction
from overnight.errors import UserError
from overnight.gateway.keys import KeyRing, key_hash
from overnight.gateway.meter import Attempt, Budgets
from overnight.gateway.server import RunningGateway, running_gateway
from overnight.org.gateway import BudgetsConfig, GatewayConfig, LimitConfig
from overnight.paths import StateDir
from overnight.records import ATTEMPT_FIELDS
from overnight.store import SqlStore, Store, open_store

_STOP = object()
log = logging.getLogger("overnight.gateway")


def agent_keys(
    store: Store, lab: str, root: Path, agents: Sequence[str]
) -> tuple[KeyRing, dict[str, Path]]:
    """A key ring holding every agent's key; issues (and saves) a key for an agent without one."""
    ring = KeyRing(store.key_hashes(lab))
    files: dict[str, Path] = {}
    folder = StateDir.of(root).keys
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for agent in agents:
        path = folder / agent
        key = path.read_text().strip() if path.is_file() else ""
        if ring.verify(key) != agent:
            key = ring.issue(agent)
            store.add_key_hash(lab, agent, key_hash(key))
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(key + "\n")
            os.replace(tmp, path)
        redaction.register(key)
        files[agent] = path
    return ring, files


class StoreSink:
    """Takes attempts and events on the event loop; they reach the store off it.

    The gateway's loop never waits on the database: `record` only enqueues.
    `close()` flushes everything before returning.

    A thread hands what arrives to a writer process at once, or under load once
    every `FORWARD_EVERY` (what arrived meanwhile as one batch), when the store
    can be opened again there (`SqlStore` on a file or a server); the writer
    gathers what arrives within `FLUSH_DELAY` into one transaction (one write
    for many attempts is far cheaper than many of one). Without a writer the
    thread does the gathering and the writing itself.

    Why a process: the store spends 20-30 us of Python (SQLAlchemy) on an
    attempt, and done by a thread of the gateway's process that work holds the
    GIL the event loop needs; at thousands of attempts a second the contention
    costs the loop more than the work itself (measured, gateway and load in one
    process at concurrency 16: +65 to +105 us of that process's CPU a request
    with a writing thread, +5 to +30 us with a writer process). Why so soon:
    what sits in the pipe survives a `kill -9` of this process (the writer
    reads it to the end and writes it), what waits in this process does not.
    Why not sooner under load: a hand-over per attempt cost the gateway ~10%
    more CPU at concurrency 64 (a GIL switch and a system call each).

    The writer runs at a lower CPU priority (nice 10), and ignores SIGINT and
    SIGTERM: it ends when its input does (this process closed it, or died),
    after writing what it has, so a Ctrl-C or a killed gateway loses nothing it
    was sent.
    """

    FLUSH_DELAY = 0.05
    """Seconds an attempt may wait for others to share its transaction."""
    BATCH = 256
    """Attempts per transaction."""
    FORWARD_EVERY = 0.01
    """Seconds between two hand-overs to the writer process under load: the most this
    process holds an attempt, so what a `kill -9` of it can lose."""

    def __init__(self, store: Store, lab: str, run_id: str | None) -> None:
        self.store = store
        self.lab = lab
        self.run_id = run_id
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._writer = _start_writer(store, lab, run_id)
        self._thread = threading.Thread(target=self._forward, name="gateway-sink", daemon=True)
        self._thread.start()

    def record(self, attempt: Attempt) -> None:
        self._queue.put(attempt)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        self._queue.put((kind, payload))

    def close(self) -> None:
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join()

    def _forward(self) -> None:
        stop = False
        handed = -math.inf
        while not stop:
            items = [self._queue.get()]
            if items[0] is not _STOP:
                # Returns at once after close(). With a writer: at once after a quiet
                # spell, else one hand-over per FORWARD_EVERY (each costs this process a
                # GIL switch and a system call); without, the batching is done here.
                if self._writer is None:
                    self._stopping.wait(self.FLUSH_DELAY)
                else:
                    wait = handed + self.FORWARD_EVERY - time.monotonic()
                    if wait > 0:
                        self._stopping.wait(wait)
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in items)
            batch = [_entry(item) for item in items if item is not _STOP]
            if batch:
                self._deliver(batch)
                handed = time.monotonic()
        writer, self._writer = self._writer, None
        if writer is not None and writer.stdin is not None:
            with contextlib.suppress(OSError):
                writer.stdin.close()
            writer.wait()

    def _deliver(self, batch: list[tuple[Any, ...]]) -> None:
        writer = self._writer
        if writer is not None and writer.stdin is not None:
            try:
                pickle.dump(batch, writer.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                writer.stdin.flush()
                return
            except OSError:
                # It died (its error is on stderr): what it had not written is lost,
                # the rest is written from here.
                log.warning(
                    "the gateway's store writer (pid %d) stopped; writing from this process",
                    writer.pid,
                )
                self._writer = None
        _write(self.store, self.lab, self.run_id, batch, self.BATCH)


_STARTED_AT = ATTEMPT_FIELDS.index("started_at")
_ERROR = ATTEMPT_FIELDS.index("error")
_VALUES = operator.attrgetter(*ATTEMPT_FIELDS)
"""An attempt's values in the store's column order (one C call; a comprehension of
getattr cost the forwarding thread 4x as much)."""
_WRITER = "from overnight.gateway.service import _writer_main; _writer_main()"


def _entry(item: Any) -> tuple[Any, ...]:
    """An attempt or an event as plain values (for the writer process): ("a", row) or
    ("e", kind, payload). Not dataclasses.asdict: it deep-copies every value, 70 us."""
    # The writer process knows no secret: what an upstream echoed back (some echo the
    # key they refused) is redacted here.
    if isinstance(item, Attempt):
        row = list(_VALUES(item))
        row[_STARTED_AT] = item.started_at.timestamp()
        if item.error:
            row[_ERROR] = redaction.redact(item.error)
        return ("a", row)
    kind, payload = item
    return ("e", kind, redaction.redact_json(payload))


def _write(
    store: Store, lab: str, run_id: str | None, batch: list[tuple[Any, ...]], per_txn: int
) -> None:
    rows = [entry[1] for entry in batch if entry[0] == "a"]
    for start in range(0, len(rows), per_txn):
        store.record_attempt_rows(lab, run_id, rows[start : start + per_txn])
    for entry in batch:
        if entry[0] == "e":
            store.append_event(run_id or "gateway", f"gateway.{entry[1]}", entry[2])


def _start_writer(store: Store, lab: str, run_id: str | None) -> subprocess.Popen[bytes] | None:
    """A writer process for `store`, or None when it cannot open the same database."""
    url = store.url if isinstance(store, SqlStore) else None
    if not url or not sys.executable or _private_database(url):
        return None
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
    except OSError:
        return None
    assert writer.stdin is not None
    try:
        # On its input, not its command line: a database URL may hold a password.
        pickle.dump((url, lab, run_id, StoreSink.BATCH), writer.stdin)
        writer.stdin.flush()
    except OSError:
        writer.kill()
        writer.wait()
        return None
    return writer


def _private_database(url: str) -> bool:
    """An in-memory SQLite database: only the process that made it sees it."""
    if not url.startswith("sqlite"):
        return False
    return ":memory:" in url or "mode=memory" in url or url.split("://", 1)[-1] in ("", "/")


def _writer_main() -> None:
    """The writer process of a StoreSink: batches from stdin into the store, until EOF.

    A reading thread takes batches off the pipe as they come; this thread writes
    what arrived within `FLUSH_DELAY` of the first as one transaction. The end of
    the input (the gateway closed it, or died; a batch cut short by its death
    included) ends the process once everything whole is written.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Behind the gateway for the CPU: the store can wait a moment, an agent's LLM call
    # should not (idle, it still writes at once).
    os.nice(10)
    stream = sys.stdin.buffer
    url, lab, run_id, per_txn = pickle.load(stream)
    inbox: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                inbox.put(pickle.load(stream))
        except (EOFError, pickle.UnpicklingError, OSError):
            pass  # the end, or a batch cut short by the gateway's death
        finally:
            inbox.put(None)

    threading.Thread(target=read, name="store-writer-input", daemon=True).start()
    store = open_store(url)
    try:
        ended = False
        while not ended:
            first = inbox.get()
            if first is None:
                return
            batch = list(first)
            deadline = time.monotonic() + StoreSink.FLUSH_DELAY
            while (left := deadline - time.monotonic()) > 0:
                try:
                    more = inbox.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    ended = True
                    break
                batch += more
            _write(store, lab, run_id, batch, per_txn)
    finally:
        store.close()


def effective_config(config: GatewayConfig, agent_budgets: dict[str, float]) -> GatewayConfig:
    """The gateway config with each `[[agents]] budget` as that agent's total limit.

    An explicit `[gateway.budgets.agents.NAME]` wins over the agent's `budget`.
    """
    limits = dict(config.budgets.agents)
    for agent, usd in agent_budgets.items():
        limits.setdefault(agent, LimitConfig(total_usd=usd))
    budgets = BudgetsConfig(
        org=config.budgets.org,
        agent=config.budgets.agent,
        agents=limits,
        default_max_tokens=config.budgets.default_max_tokens,
    )
    return config.model_copy(update={"budgets": budgets})


def seeded_budgets(config: GatewayConfig, store: Store, lab: str, agents: Sequence[str]) -> Budgets:
    """Budgets that remember what was spent before this start, today and in total."""
    budgets = Budgets(config.budgets)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    for agent in {*agents, *store.key_hashes(lab).values()}:
        total = store.spend(lab, agent=agent)
        if total:
            budgets.seed(agent, total, store.spend(lab, agent=agent, since=midnight))
    return budgets


def otlp_tracer_provider() -> Any:
    """An OpenTelemetry SDK exporting over OTLP/HTTP when the standard OTEL_* variables ask for it.

    None otherwise: spans then go to the API's no-op tracer and cost next to nothing.
    """
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise UserError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OpenTelemetry SDK is not installed.\n"
            "  fix: pip install 'overnight[otel]', or unset the variable."
        ) from None
    service = os.environ.get("OTEL_SERVICE_NAME", "overnight-gateway")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


@contextlib.contextmanager
def lab_gateway(
    config: GatewayConfig,
    store: Store,
    lab: str,
    root: Path,
    agents: dict[str, float | None],
    run_id: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    governor: Any = None,
    tracer_provider: Any = None,
) -> Iterator[tuple[RunningGateway, dict[str, Path]]]:
    """Serve a lab's gateway from a background thread; yields its URL and the agents' key files.

    `agents` maps each agent's name to its `budget` (USD, or None).
    """
    config = effective_config(config, {a: b for a, b in agents.items() if b is not None})
    ring, files = agent_keys(store, lab, root, list(agents))
    budgets = seeded_budgets(config, store, lab, list(agents))
    owned = tracer_provider is None  # else the caller's, shared with the lab's own spans
    provider = otlp_tracer_provider() if owned else tracer_provider
    sink = StoreSink(store, lab, run_id)
    try:
        with running_gateway(
            config,
            ring,
            sink,
            sink.event,
            budgets=budgets,
            tracer_provider=provider,
            governor=governor,
            host=config.host if host is None else host,
            port=config.port if port is None else port,
        ) as url:
            yield url, files
    finally:
        sink.close()
        if owned and provider is not None:
            provider.shutdown()  # flushes the spans still batched
