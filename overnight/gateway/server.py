"""Running the gateway: a small HTTP/1.1 server for its ASGI app, in a background thread.

Owns the server's socket, its event loop (uvloop when installed) and the
connections: parsing requests with httptools, keep-alive, handing each request
to the app as ASGI `http` messages, writing the app's answer (a whole response
in one write, a stream as chunks), backpressure both ways, telling the app
when its client has gone, and stopping gracefully. Knows nothing about LLMs:
the app is `app.Gateway`, which it also starts and stops (ASGI lifespan).

Why not uvicorn: the gateway needs a small subset of it, and that subset,
written for the purpose, costs less: measured on a 2-core box at concurrency
64, a trivial ASGI app takes 28 us of CPU a request here against 40-50 us
under uvicorn, and a response's head and body go out in one system call, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import httptools

from overnight.gateway.app import Gateway, Message
from overnight.gateway.config import GatewayConfig, Secret
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import Budgets, MeterSink
from overnight.gateway.prices import PriceTable
from overnight.gateway.router import Events

log = logging.getLogger("overnight.gateway")

KEEP_ALIVE = 5.0
"""Seconds an idle client connection stays open (uvicorn's and Node's default)."""
GRACE = 5.0
"""Seconds requests in flight may take to finish when the server stops."""
_BODY_HIGH_WATER = 1 << 16  # request body bytes buffered unread before reading pauses
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_DISCONNECT: Message = {"type": "http.disconnect"}


def quiet_gc() -> None:
    """Keep the garbage collector off the request path of a long-lived gateway process.

    Requests make no reference cycles, yet allocation-triggered collections
    ran ~700 times per 18k requests at concurrency 64 and set its p99
    (benchmarks/gateway_overhead.py). Freezing what startup allocated and
    collecting young objects less often removes most of that tail.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class _Exchange:
    """One request on a connection and the app's answer to it."""

    def __init__(
        self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        """The request's body has not all arrived."""
        self.delivered = False
        """The app has received the request's last body message."""
        self.started = False
        self.complete = False
        """The whole response has been written."""
        self._head: list[bytes] | None = None
        self._has_length = False
        self._chunked = False
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self.conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # -- ASGI ---------------------------------------------------------------------------------

    async def receive(self) -> Message:
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            if not conn.closed:
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (conn.closed or self.complete):
            if not self.delivered and (self.body or not self.more_body):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.buffered = 0
                self.delivered = not self.more_body
                conn.resume_reading()
                return {"type": "http.request", "body": body, "more_body": self.more_body}
            # Waiting for more body, or (all delivered) for the client to leave.
            conn.resume_reading()
            await self._wait()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not conn.closed:
            await conn.drain()
        if conn.closed:
            return  # the client left, or we closed on it: the answer goes nowhere
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self.started = True
            self._start(message["status"], message.get("headers") or ())
            return
        if kind != "http.response.body" or self.complete:
            raise RuntimeError(
                f"unexpected ASGI message {kind} (response complete: {self.complete})"
            )
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        out: list[bytes] = []
        head = self._head
        if head is not None:
            # The head waits for the first body, so a whole answer is one write.
            self._head = None
            if not self._has_length:
                if more:
                    self._chunked = True
                    head.append(b"transfer-encoding: chunked\r\n")
                else:
                    head.append(b"content-length: %d\r\n" % len(body))
            head.append(b"\r\n")
            out = head
        if self.scope["method"] == "HEAD":
            body = b""
        if self._chunked:
            if body:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            out.append(body)
        if out:
            conn.write(out[0] if len(out) == 1 else b"".join(out))
        if not more:
            self.complete = True
            self.wake()  # a receive() waiting for the client to leave returns now
            conn.answered(self)

    def _start(self, status: int, headers: Any) -> None:
        head = [_STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status]
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                self._has_length = True
            elif lower == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            head += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        self._head = head


class _Connection(asyncio.Protocol):
    """One client connection: requests answered one at a time, in order."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.write_paused = False
        self._read_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.exchange: _Exchange | None = None
        """The request being answered."""
        self._parsing: _Exchange | None = None
        """The request whose body is arriving (a pipelined one may follow the answered one)."""
        self._pipeline: deque[_Exchange] = deque()
        self.idle_since: float | None = None
        """When it last had nothing to do, on the loop's clock; None while it has a request."""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._peer: Any = None
        self._local: Any = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._peer = transport.get_extra_info("peername")
        self._local = transport.get_extra_info("sockname")
        self.server.connections.add(self)
        self.idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: the request (taken as having no body) is
            # answered, then the connection ends.
            exchange, self._parsing = self._parsing, None
            if exchange is not None:
                exchange.keep_alive = False
                exchange.more_body = False
                exchange.wake()
        except httptools.HttpParserError as exc:
            if self.exchange is None and not self.closed:
                body = f"bad request: {exc}".encode()
                self.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for exchange in (self.exchange, self._parsing, *self._pipeline):
            if exchange is not None:
                exchange.wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect = False
        self.idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self._url)
        raw_path: bytes = url.path
        path = raw_path.decode("latin-1")
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self._local,
            "client": self._peer,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": self._headers,
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = self._parsing = _Exchange(self, scope, keep_alive, self._expect)
        if self.exchange is None:
            self._answer(exchange)
        else:
            self._pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None or exchange.complete:
            return  # answered without reading it all
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _BODY_HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()
            if exchange.complete and self.exchange is None:
                self.idle_since = self.loop.time()  # answered before its body was all here

    # -- answering -----------------------------------------------------------------------------

    def _answer(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        task = self.loop.create_task(self._run(exchange))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.server.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            self.close()  # the server is stopping and the request ran out of time
            return
        except Exception:
            scope = exchange.scope
            log.exception("the gateway failed on %s %s", scope["method"], scope["path"])
            if exchange.started:
                self.close()
            else:
                await self._fail(exchange)
            return
        if not exchange.complete and not self.closed:
            log.error("the gateway returned without a whole answer to %s", exchange.scope["path"])
            if exchange.started:
                self.close()
            else:
                await self._fail(exchange)

    async def _fail(self, exchange: _Exchange) -> None:
        exchange.keep_alive = False
        body = b"Internal Server Error"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await exchange.send({"type": "http.response.start", "status": 500, "headers": headers})
        await exchange.send({"type": "http.response.body", "body": body})

    def answered(self, exchange: _Exchange) -> None:
        """The response to `exchange` is written: on to the next request, or close."""
        self.exchange = None
        if not exchange.keep_alive or self.server.stopping:
            self.close()
            return
        if self._pipeline:
            self._answer(self._pipeline.popleft())
            if not self._pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        if self._parsing is None:
            self.idle_since = self.loop.time()

    # -- the transport -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        await self._drained

    def pause_reading(self) -> None:
        if not self._read_paused and not self.closed and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and not self.closed and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close once what was written has gone out; from now on the app's client is gone."""
        if not self.closed:
            self.closed = True
            for exchange in (self.exchange, self._parsing, *self._pipeline):
                if exchange is not None:
                    exchange.wake()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Server:
    """Serves one ASGI app on a listening socket until `stop()`."""

    def __init__(self, app: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.started = threading.Event()
        self._stop: asyncio.Event | None = None

    async def serve(self, sock: socket.socket) -> None:
        self._stop = asyncio.Event()
        lifespan = _Lifespan(self.app)
        await lifespan.startup()
        listener = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)
        sweeper = asyncio.create_task(self._close_idle())
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            listener.close()
            await self._drain()
            await lifespan.shutdown()

    async def _close_idle(self) -> None:
        # One sweep a second instead of a timer per response: the timer cost more.
        while True:
            await asyncio.sleep(1.0)
            cutoff = self.loop.time() - KEEP_ALIVE
            for conn in list(self.connections):
                if conn.idle_since is not None and conn.idle_since < cutoff:
                    conn.close()

    def stop(self) -> None:
        """From any thread: stop accepting, let requests in flight finish, then return."""
        stop = self._stop
        if stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self.loop.call_soon_threadsafe(stop.set)

    async def _drain(self) -> None:
        self.stopping = True
        for conn in list(self.connections):
            if conn.exchange is None:
                conn.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=GRACE)
        # Out of time: a closed connection tells each app task its client left.
        for conn in list(self.connections):
            conn.close()
        if self.tasks:
            _, late = await asyncio.wait(list(self.tasks), timeout=1.0)
            for task in late:
                task.cancel()
        await asyncio.sleep(0)  # let the transports finish closing


class _Lifespan:
    """The ASGI lifespan protocol: the app's startup before serving, its shutdown after."""

    def __init__(self, app: Gateway) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI}
        self._task = asyncio.create_task(self._app(scope, self._inbox.get, self._outbox.put))
        await self._step("lifespan.startup")

    async def shutdown(self) -> None:
        await self._step("lifespan.shutdown")
        if self._task is not None:
            await self._task

    async def _step(self, kind: str) -> None:
        assert self._task is not None
        await self._inbox.put({"type": kind})
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait([reply, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self._task.result()  # the app's own exception, if it raised
            raise RuntimeError(f"the app ended its lifespan without answering {kind}")
        message = reply.result()
        if message["type"] != f"{kind}.complete":
            raise RuntimeError(f"{kind} failed: {message.get('message', message['type'])}")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class RunningGateway(str):
    """The base URL of a gateway running in a thread; `.gateway` is the app itself."""

    gateway: Gateway

    def __new__(cls, url: str, gateway: Gateway) -> RunningGateway:
        self = super().__new__(cls, url)
        self.gateway = gateway
        return self


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig,
    keys: KeyRing,
    sink: MeterSink,
    events: Events | None = None,
    *,
    secrets: dict[tuple[str, str], Secret] | None = None,
    budgets: Budgets | None = None,
    prices: PriceTable | None = None,
    clock: Callable[[], float] | None = None,
    tracer_provider: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningGateway]:
    """A gateway on `host:port` (default: loopback, a free port), served from a background thread.

    Yields its base URL (`http://HOST:PORT`, a `str` with `.gateway`); the
    socket is listening before the `with` body starts. A port in use raises OSError.
    Leaving the block stops it: requests in flight get `GRACE` seconds to finish.
    """
    options: dict[str, Any] = {
        "secrets": secrets,
        "budgets": budgets,
        "prices": prices,
        "tracer_provider": tracer_provider,
    }
    if clock is not None:
        options["clock"] = clock
    app = Gateway(config, keys, sink, events, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    loop = _new_loop()
    server = _Server(app, loop)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(server.serve(sock))
        except BaseException as exc:  # reported to the caller's thread
            failure.append(exc)
        finally:
            server.started.set()
            loop.close()

    thread = threading.Thread(target=run, name=f"gateway-{port}", daemon=True)
    thread.start()
    if not server.started.wait(10) or failure or not thread.is_alive():
        server.stop()
        thread.join(5)
        sock.close()
        raise RuntimeError(f"the gateway did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield RunningGateway(f"http://{host}:{port}", app)
    finally:
        server.stop()
        thread.join(GRACE + 5)
        sock.close()
