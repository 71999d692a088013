"""Running the gateway: a small HTTP/1.1 server for its ASGI app, in a background thread.

Owns the server's socket, its event loop (uvloop when installed) and the
connections: parsing requests with httptools, keep-alive and pipelining
(answers in order), `Expect: 100-continue`, handing each request to the app as
ASGI `http` messages, writing the app's answer (a whole response in one write,
a stream as chunks), backpressure both ways, telling the app when its client
has gone, and stopping gracefully. Also what a client may not do: send a head
too big (431) or malformed (400), or send too slowly (408, see HEAD_TIMEOUT);
each refusal ends the connection without a reset that could swallow it. A
body's size limit is the app's (it answers 413 in the client's protocol).
Knows nothing about LLMs: the app is `app.Gateway`, which it also starts and
stops (ASGI lifespan).

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

from overnight.costs.prices import PriceTable
from overnight.gateway.app import Gateway
from overnight.gateway.asgi import Message
from overnight.gateway.config import Secret
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import Budgets, MeterSink
from overnight.gateway.router import Events
from overnight.org.gateway import GatewayConfig

log = logging.getLogger("overnight.gateway")

KEEP_ALIVE = 5.0
"""Seconds an idle client connection stays open (uvicorn's and Node's default)."""
GRACE = 5.0
"""Seconds requests in flight may take to finish when the server stops."""
HEAD_TIMEOUT = 10.0
"""Seconds a client may take to send a request's line and headers, from its first byte."""
BODY_TIMEOUT = 60.0
"""Seconds a client may take to send a whole request, body included, from its first byte.
A client slower than either (a slowloris) gets 408 and is dropped; others are not held up."""
MAX_HEAD = 64 * 1024
"""Bytes of request line and headers accepted (Node allows 16 KiB, nginx 4 x 8 KiB); more is 431."""
MAX_HEADERS = 100
"""Header fields accepted in one request (Apache's default); more is 431."""
LINGER = 2.0
"""Seconds a refused client's further bytes are read and dropped before the connection closes:
closing on unread bytes would send a reset, which can destroy the refusal before it is read."""
_BODY_HIGH_WATER = 1 << 16  # request body bytes buffered unread before reading pauses
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_DISCONNECT: Message = {"type": "http.disconnect"}


def quiet_gc() -> None:
    """Keep the garbage collector off the request path of a long-lived gateway process.

    A request leaves no reference cycles (tests/gateway/test_server.py counts them),
    so what it allocates is freed by reference counting, and the collector never
    has work on its account; but startup leaves a large heap, which a collection
    would walk. Freezing it, and collecting young objects rarely, keeps collections
    (and their pauses, every request in flight waiting) out of the tail latency.
    When requests did leave cycles, each collection stopped the gateway 30-90 ms at
    concurrency 64 (benchmarks/gateway_overhead.py).
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
        """The client waits for `100 Continue` before it sends the body."""
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
        self._on_gone: Callable[[], None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """The `overnight.disconnect` extension: `callback` runs once if the client goes
        away before the answer is complete (None takes it back). The same news as an
        `http.disconnect` from `receive()`, without a task per request to wait for it."""
        if callback is not None and (self.conn.closed and not self.complete):
            callback()
            return
        self._on_gone = callback

    def gone(self) -> None:
        self.wake()
        callback, self._on_gone = self._on_gone, None
        if callback is not None and not self.complete:
            callback()

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
            # The app asks for the body: the client may send it. Not once the answer has
            # begun (it is a refusal), nor when the client sent the body without waiting.
            self.expect_continue = False
            if not (conn.closed or self.started or self.body or not self.more_body):
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
        if self.more_body or self.conn.server.stopping:
            # Answered before its body was all here (a refusal: 401, 413), the next
            # request's start cannot be found without reading the rest: the connection
            # ends after this answer. Likewise when the server is stopping.
            self.keep_alive = False
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        self._head = head


class _Refused(Exception):
    """The request cannot be served as sent; answered with `status`, then the connection ends."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


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
        self._refusal: bytes | None = None
        """The answer to a bad request that follows pipelined ones still to be answered."""
        self._discarding = False
        """Refused and half-closed: what the client still sends is dropped (see LINGER)."""
        self.idle_since: float | None = None
        """When it last had nothing to do, on the loop's clock; None while it has a request."""
        self.begun = 0.0
        """When the request being received sent its first byte, on the loop's clock."""
        self.deadline: float | None = None
        """When the request being received must have arrived (its head, then its body)."""
        self._in_head = False
        self._head_bytes = 0
        """Bytes of the current request's URL and finished header fields."""
        self._head_reads = 0
        """Bytes of the reads that fell wholly within the current request's head."""
        self._fields = 0
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
        if self._discarding:
            return
        in_head = self._in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: the request (taken as having no body) is
            # answered, then the connection ends.
            exchange, self._parsing = self._parsing, None
            self._in_head = False
            self.deadline = None
            if exchange is not None:
                exchange.keep_alive = False
                exchange.more_body = False
                exchange.wake()
            self.pause_reading()
            return
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                raise  # our own bug in a callback
            self._refuse(refused.status, str(refused))
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"bad request: {exc}")
            return
        if in_head and self._in_head:
            # The whole read was head. The parser buffers a field until its end, so
            # counting only finished fields would let one endless header grow unbounded.
            self._head_reads += len(data)
            if self._head_reads > MAX_HEAD:
                self._refuse(431, f"request header fields too large: over {MAX_HEAD} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for exchange in (self.exchange, self._parsing, *self._pipeline):
            if exchange is not None:
                exchange.gone()
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
        self._in_head = True
        self._head_bytes = self._head_reads = 0
        self._fields = 0
        self.idle_since = None
        self.begun = self.loop.time()
        self.deadline = self.begun + HEAD_TIMEOUT

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD:
            raise _Refused(431, f"request line too long: over {MAX_HEAD} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._fields > MAX_HEADERS:
            raise _Refused(431, f"too many request header fields: over {MAX_HEADERS}")
        if self._head_bytes > MAX_HEAD:
            raise _Refused(431, f"request header fields too large: over {MAX_HEAD} bytes")
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.deadline = self.begun + BODY_TIMEOUT
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
        # An HTTP/1.0 client does not know 100 Continue (RFC 9110 10.1.1).
        expect = self._expect and version == "1.1"
        exchange = self._parsing = _Exchange(self, scope, keep_alive, expect)
        scope["extensions"] = {"overnight.disconnect": exchange.on_disconnect}
        if self.exchange is None:
            self._answer(exchange)
        else:
            self._pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None or exchange.complete:
            return  # answered without reading it all: discarded
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _BODY_HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        self.deadline = None
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()
            if exchange.complete:
                # Answered before its body was all here, with `connection: close`;
                # the rest of the body is read (and dropped) so the client reads the
                # answer instead of a reset.
                self.close()

    # -- answering -----------------------------------------------------------------------------

    def _answer(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        task = self.loop.create_task(self._run(exchange))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self._call_app(exchange)
        finally:
            # The extension is a method of the exchange, held by its scope: a reference
            # cycle per request, which would leave every request's objects to the
            # garbage collector, and its pauses in the gateway's tail latency.
            exchange.scope.pop("extensions", None)
            exchange.on_disconnect(None)

    async def _call_app(self, exchange: _Exchange) -> None:
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
        if self._parsing is exchange:
            if exchange.expect_continue and not exchange.body:
                # Refused before `100 Continue`: the client holds its body back.
                self.close()
                return
            # Its body is still arriving: read to its end (on_message_complete closes),
            # or until the client hangs up or its time is up.
            self.resume_reading()
            return
        if not exchange.keep_alive or self.server.stopping:
            self.close()
            return
        if self._pipeline:
            self._answer(self._pipeline.popleft())
            if not self._pipeline:
                self.resume_reading()
            return
        if self._refusal is not None:
            self._write_refusal()
            return
        self.resume_reading()
        if self._in_head:
            # A pipelined request's head was arriving while this one was answered.
            self.begun = self.loop.time()
            self.deadline = self.begun + HEAD_TIMEOUT
        elif self._parsing is None:
            self.idle_since = self.loop.time()

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request that cannot be served (400, 408, 431), then end the connection."""
        self._in_head = False
        self.deadline = None
        self.pause_reading()
        exchange, parsing = self.exchange, self._parsing
        if exchange is None and parsing is not None and parsing.complete:
            self.close()  # in the dropped rest of an answered request's body
            return
        if exchange is not None and exchange is parsing and exchange.started:
            self.close()  # its answer has begun: it cannot be replaced, only cut
            return
        body = reason.encode()
        self._refusal = (
            _STATUS.get(status, b"HTTP/1.1 %d \r\n" % status)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        if exchange is None or exchange is parsing:
            # A request of its own, or the body of the one being answered (a broken
            # chunk, too slow): the refusal is its answer; its app hears the client left.
            self._write_refusal()
        # Else it follows pipelined requests: it goes out after their answers (`answered`).

    def _write_refusal(self) -> None:
        refusal, self._refusal = self._refusal, None
        transport = self.transport
        if refusal is None or self.closed or transport is None or not transport.can_write_eof():
            self.close()
            return
        self.write(refusal)
        # Half-closed: the client reads the refusal and our end; what it still sends
        # is dropped until it closes too, or LINGER runs out (then `sweep` closes).
        self.close_for_app()
        transport.write_eof()
        self._discarding = True
        self.deadline = self.loop.time() + LINGER
        self._read_paused = False
        transport.resume_reading()

    def sweep(self, now: float) -> None:
        """Close the connection if it has been idle too long or its client is too slow."""
        if self._discarding:
            if self.deadline is not None and now >= self.deadline:
                self.close()
            return
        if self.idle_since is not None:
            if now - self.idle_since > KEEP_ALIVE:
                self.close()
            return
        deadline = self.deadline
        if deadline is None or now < deadline or self.closed:
            return
        if self._read_paused:
            return  # not reading is our choice (backpressure, a pipelined request waiting)
        exchange = self.exchange
        if exchange is not None and exchange is not self._parsing:
            return  # its request is in; the late one is pipelined behind it
        if self._parsing is not None and self._parsing.complete:
            self.close()  # the dropped rest of an answered request's body
            return
        if self._in_head:
            self._refuse(408, f"request head not received within {HEAD_TIMEOUT:g}s")
        else:
            self._refuse(408, f"request not received whole within {BODY_TIMEOUT:g}s")

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
            if self._refusal is not None:
                return  # nothing more is read from a client that sent a bad request
            self._read_paused = False
            self.transport.resume_reading()
            if self.deadline is not None:
                # Time spent not reading was ours, not the client's.
                self.deadline = max(self.deadline, self.loop.time() + HEAD_TIMEOUT)

    def close_for_app(self) -> None:
        """From now on the app's client is gone: what it sends is dropped."""
        if not self.closed:
            self.closed = True
            for exchange in (self.exchange, self._parsing, *self._pipeline):
                if exchange is not None:
                    exchange.gone()

    def close(self) -> None:
        """Close once what was written has gone out; from now on the app's client is gone."""
        self.close_for_app()
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
        # One sweep a second instead of timers per request: the timers cost more.
        while True:
            await asyncio.sleep(min(1.0, HEAD_TIMEOUT / 4))
            now = self.loop.time()
            for conn in list(self.connections):
                conn.sweep(now)

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
    governor: Any = None,
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
        "governor": governor,
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
