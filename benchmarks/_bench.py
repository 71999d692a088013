"""Shared plumbing of the gateway benchmarks: child processes, ports, a cheap HTTP client.

Not a benchmark itself. `gateway_overhead.py` and `failover.py` import it (they
run from `benchmarks/`, so it is on `sys.path`).

- `Children`: starts each server in its own process group, its output in a log
  file, and ends every one of them (the whole group) on exit, error or signal.
- `start_fake` / `start_gateway`: an `overnight fake-provider` process and a
  gateway process (`_gateway_runner.py`), each on 127.0.0.1 and a free port.
- `Conn` / `run_load`: a raw HTTP/1.1 keep-alive client on asyncio + httptools,
  a few tens of microseconds per request, so the load generator does not
  dominate what it measures; the same client measures every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench"
LOG_DIR = BENCH_DIR / "logs"
_TICKS = os.sysconf("SC_CLK_TCK")
RUNNER = Path(__file__).resolve().parent / "_gateway_runner.py"


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks (and `Children`) still run."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


class Children:
    """Child processes, each the leader of its own process group; all ended on exit."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        LOG_DIR.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = LOG_DIR / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.logs[name] = log

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.logs[name].read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Anything the child left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def cpu_seconds(self, *names: str) -> float:
        """CPU time used so far by the process groups of `names` (default: every child).
        Linux only (/proc)."""
        groups = {proc.pid for name, proc in self.procs.items() if not names or name in names}
        total = 0.0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups:
                total += (int(fields[11]) + int(fields[12])) / _TICKS
        return total

    def wait_quiet(self, below: float = 0.05, timeout: float = 15.0) -> float:
        """Wait until the children together use under `below` of a core (over 0.25 s),
        so work one server still does after its load (LiteLLM logs for ~1 s after)
        does not land in the next measurement. Returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = self.cpu_seconds()
            time.sleep(0.25)
            if self.cpu_seconds() - before < below * 0.25:
                break
        return time.monotonic() - started

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout=5.0
) -> tuple[int, bytes]:
    """A blocking request for control calls (health, admin); (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_ready(children: Children, name: str, url: str, timeout: float) -> None:
    """Poll `url` until it answers 200; RuntimeError (with the log's tail) otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not children.alive(name):
            raise RuntimeError(
                f"{name} exited before it was ready:\n{children.log_tail(name)}".rstrip()
            )
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(
        f"{name} was not ready within {timeout:g}s ({last}):\n{children.log_tail(name)}".rstrip()
    )


def start_fake(children: Children, name: str, protocol: str = "anthropic") -> int:
    """`overnight fake-provider` in its own process; its port once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "overnight", "fake-provider", "--protocol", protocol]
    children.start(name, [*argv, "--port", str(port)])
    wait_ready(children, name, f"http://127.0.0.1:{port}/v1/models", 30)
    return port


@dataclass
class GatewayProcess:
    port: int
    key: str
    """The virtual key the benchmark's client presents."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        status, body = http("GET", self.url + "/health")
        if status != 200:
            raise RuntimeError(f"gateway /health answered HTTP {status}")
        return dict(json.loads(body))


def start_gateway(
    children: Children, name: str, config: dict[str, Any], env: dict[str, str]
) -> GatewayProcess:
    """The gateway (config built in code, secrets from `env`) in its own process."""
    port = free_port()
    key = "ovn-bench-" + secrets.token_urlsafe(16)
    argv = [sys.executable, str(RUNNER), "--port", str(port), "--config", json.dumps(config)]
    children.start(name, argv, {**env, "BENCH_AGENT_KEY": key})
    wait_ready(children, name, f"http://127.0.0.1:{port}/health", 30)
    return GatewayProcess(port, key)


# --- the load generator ---------------------------------------------------------------------


def request_bytes(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"]
    head += [f"{k}: {v}\r\n" for k, v in headers.items()]
    head.append(f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    return "".join(head).encode("latin-1") + body


class Conn(asyncio.Protocol):
    """One keep-alive connection that sends a request and waits for the whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self.status = 0
        self.keep_alive = True
        self.lost = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, "127.0.0.1", port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"connection closed: {exc}"))

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.lost or self.transport is None:
            raise ConnectionError("connection closed")
        self._parser = httptools.HttpResponseParser(self)
        self._body = []
        self.status = 0
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            await self._waiter
        finally:
            self._waiter = None
        return self.status, b"".join(self._body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Check = Callable[[int, bytes], str | None]
"""Tells a good answer (None) from a bad one (a short reason)."""


def ok_answer(stream: bool) -> Check:
    """200, and for a stream, its proper end (`message_stop` or `[DONE]`) in the last bytes."""

    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:160]!r}"
        if stream:
            tail = body[-200:]
            if b"message_stop" not in tail and b"[DONE]" not in tail:
                return f"stream did not end properly: ...{tail[-120:]!r}"
            if b"event: error" in body:
                return f"error event in stream: {body[-200:]!r}"
        elif not body.startswith(b"{"):
            return f"not JSON: {body[:120]!r}"
        return None

    return check


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    """Seconds per good answer, measured phase only."""
    errors: int = 0
    sent: int = 0
    """Requests sent, warm-up included."""
    samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    timed_out: bool = False

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


async def run_load(
    port: int,
    data: bytes,
    *,
    n: int,
    concurrency: int,
    check: Check,
    warmup: int,
    max_seconds: float,
) -> LoadResult:
    """`n` requests (fewer if `max_seconds` runs out) by `concurrency` keep-alive workers,
    after `warmup` unmeasured ones on the same connections."""
    result = LoadResult()
    conns = [await Conn.open(port) for _ in range(concurrency)]
    perf = time.perf_counter

    async def worker(i: int, budget: list[int], measure: bool, deadline: float) -> None:
        conn = conns[i]
        while budget[0] > 0 and perf() < deadline:
            budget[0] -= 1
            result.sent += 1
            t0 = perf()
            try:
                status, body = await conn.request(data)
            except ConnectionError as exc:
                if measure:
                    result.errors += 1
                    if len(result.samples) < 3:
                        result.samples.append(str(exc))
                conn = conns[i] = await Conn.open(port)
                continue
            t1 = perf()
            bad = check(status, body)
            if measure:
                if bad is None:
                    result.latencies.append(t1 - t0)
                else:
                    result.errors += 1
                    if len(result.samples) < 3:
                        result.samples.append(bad)
            if not conn.keep_alive or conn.lost:
                conn.close()
                conn = conns[i] = await Conn.open(port)

    async def phase(count: int, measure: bool, seconds: float) -> None:
        budget = [count]
        deadline = perf() + seconds
        await asyncio.gather(*(worker(i, budget, measure, deadline) for i in range(concurrency)))

    try:
        try:
            await asyncio.wait_for(phase(warmup, False, max_seconds), max_seconds + 30)
            started = perf()
            await asyncio.wait_for(phase(n, True, max_seconds), max_seconds + 30)
            result.elapsed = perf() - started
        except TimeoutError:
            result.timed_out = True
            result.errors += 1
            result.samples.append(f"requests hung past {max_seconds + 30:g}s")
    finally:
        for conn in conns:
            conn.close()
    return result


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is a dependency of overnight): a cheaper load generator."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- statistics -----------------------------------------------------------------------------


def commit_lab(root: Path, files: dict[str, str]) -> Path:
    """A new git repository at `root` holding `files`, committed."""
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "noop"],
    ):
        subprocess.run(cmd, cwd=root, check=True)
    return root


@contextlib.contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A store URL on the PostgreSQL server at `base`, in a fresh schema of its own,
    dropped with everything in it when the block ends."""
    from sqlalchemy import create_engine, text

    schema = "bench_" + uuid.uuid4().hex[:10]
    engine = create_engine(base.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            yield f"{base}?options=-csearch_path%3D{schema}"
        finally:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        engine.dispose()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{round(seconds * 1000, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: os.cpu_count()={os.cpu_count()}, load average (1/5/15 min) at start: {load}"
