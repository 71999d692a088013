"""The gateway's HTTP/1.1 client for upstream calls.

Owns connections to upstreams: a keep-alive pool per origin, TLS (verified
against the system's store or an upstream's `ca_file`), going through an HTTP
proxy when `proxies.py` chose one (a CONNECT tunnel for https://, absolute-form
requests for http://), writing a request in one go, parsing the answer with
httptools, handing its body over piece by piece as it arrives (with
backpressure), and telling a connection that died before answering from one
that died mid-answer. Knows nothing about LLMs, routing or retries beyond one:
a request sent on a pooled connection that dies before a single byte of answer
may be sent again once, on a fresh connection, under the narrow rule in
`_stale` (the server had closed the idle one as the request went out).

Why not aiohttp or httpx: measured here (2 cores, loopback, p50 of a small
POST round trip against the same server), this client takes 0.12 ms, aiohttp
0.20 ms and httpx 0.46 ms, and the gateway's added latency is mostly such
per-request costs; a proxy needs only this small subset of HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from overnight.org.gateway import Proxy

_HIGH_WATER = 1 << 20  # bytes buffered from an upstream before reading pauses
_MAX_IDLE = 256  # idle connections kept per origin
_DRAIN_WAIT = 1.0
"""Seconds a connection released before its answer's end (a stream whose last event is
relayed, its terminating chunk still on the way) waits for that end to be pooled again."""
_DRAIN_BYTES = 1 << 16
"""Bytes such a connection may still receive; an upstream that sends more is closed on."""
# See `_stale`: a pooled connection this long idle may have hit the server's keep-alive
# timeout (the shortest common ones are 1-2 s: gunicorn 2 s, uvicorn/Node 5 s) ...
_STALE_IDLE = 1.0
# ... and the server's close of it reaches us within about a round trip of our write.
_STALE_WINDOW = 1.0


class UpstreamError(Exception):
    """The connection failed: refused, reset, closed early, or not HTTP."""


def describe(exc: BaseException) -> str:
    """What failed in a request to an upstream, for an attempt's error."""
    if isinstance(exc, UpstreamError):
        return str(exc)  # says what failed in its own words
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


@dataclass(frozen=True)
class Origin:
    """Where requests for one upstream go, and how: TLS settings, proxy."""

    scheme: str
    host: str
    port: int
    prefix: str
    """Path before `/v1/...` (empty for most servers)."""
    tls: ssl.SSLContext | None = None
    """For https://: how the server's certificate is verified."""
    proxy: Proxy | None = None

    @functools.cached_property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @functools.cached_property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.authority if self.port != default else self.authority.rsplit(":", 1)[0]

    @functools.cached_property
    def request_start(self) -> str:
        """A request's path prefix: absolute-form through a proxy to an http:// origin."""
        if self.proxy is not None and self.scheme == "http":
            return f"http://{self.host_header}{self.prefix}"
        return self.prefix

    @functools.cached_property
    def proxy_headers(self) -> str:
        """Header lines each request carries for the proxy (a tunnel's go on its CONNECT)."""
        proxy = self.proxy
        if proxy is None or self.scheme != "http" or proxy.authorization is None:
            return ""
        return f"proxy-authorization: {proxy.authorization}\r\n"


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifies a server's certificate and name against `ca_file` (PEM), or else the
    system's store, which `SSL_CERT_FILE` / `SSL_CERT_DIR` replace as OpenSSL reads them.

    OSError or ssl.SSLError for a file that is missing or holds no certificate.
    """
    context = ssl.create_default_context(cafile=os.path.expanduser(ca_file) if ca_file else None)
    context.set_alpn_protocols(["http/1.1"])
    return context


def origin_of(
    root: str, *, tls: ssl.SSLContext | None = None, proxy: Proxy | None = None
) -> Origin:
    """The origin of a base URL; an https:// one without `tls` verifies against the system."""
    parts = urlsplit(root)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    if scheme == "https" and tls is None:
        tls = tls_context()
    host = parts.hostname or "127.0.0.1"
    return Origin(scheme, host, port, parts.path.rstrip("/"), tls, proxy)


class Response:
    """An answer whose status and headers have arrived; its body follows."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._head_done = False
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._inflate: Any = None
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._draining = False
        """Released before its end: what still arrives is dropped, its end pools the
        connection."""

    # -- fed by the connection ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _head(self, status: int) -> None:
        self.status = status
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflate = zlib.decompressobj()
        elif encoding != "identity":
            self._fail(UpstreamError(f"unsupported content-encoding {encoding!r}"))
            return
        self._head_done = True
        self._wake()

    def _body(self, data: bytes) -> None:
        if self._draining:
            self._buffered += len(data)
            if self._buffered > _DRAIN_BYTES:
                self._conn.close()
            return
        if self._inflate is not None:
            data = self._inflate.decompress(data)
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER:
                self._conn.pause()
            self._wake()

    def _done(self) -> None:
        self._complete = True
        if self._draining:
            self._conn.finish(True)
        else:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
            self._wake()

    async def _wait(self, timeout: float | None = None) -> None:
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        if timeout is not None:
            # One lazy timer for the whole answer instead of one per wait: it is left
            # armed between waits and, when it fires early (a later wait moved the
            # deadline on), re-armed for the new deadline. A timer made and cancelled
            # per wait was a measurable share of a stream's relay.
            deadline = self._deadline = loop.time() + timeout
            if self._timer is None or self._timer_at > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a timer again
        loop = self._conn.loop
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- for the caller -----------------------------------------------------------------------

    async def _await_head(self, deadline: float | None) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(None if deadline is None else deadline - _now())

    async def chunk(self, timeout: float | None = None) -> bytes:
        """The body bytes that arrived since the last call (waiting if none); b"" at its end.

        TimeoutError when `timeout` seconds pass with nothing new.
        """
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                self._conn.resume()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout)

    async def read(self, timeout: float | None = None) -> bytes:
        """The rest of the body; TimeoutError when it takes over `timeout` seconds in all."""
        deadline = None if timeout is None else _now() + timeout
        parts = []
        while chunk := await self.chunk(None if deadline is None else deadline - _now()):
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        """The whole body has arrived (so the connection may serve another request)."""
        return self._complete

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can, else closes.

        Released before its end (a stream whose last event has been relayed), the
        connection waits up to `_DRAIN_WAIT` for that end, as Go's net/http drains a
        body closed early: reconnecting for every stream cost the gateway and the
        upstream more than the stream itself (benchmarks/gateway_overhead.py).
        """
        conn = self._conn
        if self._complete or self._error is not None or conn.closed:
            conn.finish(self._complete)
            return
        self._draining = True
        self._chunks.clear()
        self._buffered = 0
        conn.resume()
        conn.drain(_DRAIN_WAIT)

    def close(self) -> None:
        """Abandon the answer: the connection closes, which cancels the upstream's work."""
        self._conn.close()


class _Connection(asyncio.Protocol):
    def __init__(
        self,
        pool: list[_Connection],
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        live: set[_Connection],
    ) -> None:
        self._pool = pool
        self._live = live
        self._clock = clock
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self._paused = False
        self._keep_alive = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        """When it went (back) into the pool, on the client's clock."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        response._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._live.discard(self)
        if self in self._pool:
            self._pool.remove(self)
        response = self.response
        if response is not None and not response._complete:
            if response._head_done and not self._framed(response):
                response._done()  # a body delimited by the connection's end
            else:
                reason = f": {exc}" if exc else ""
                response._fail(UpstreamError(f"the upstream closed the connection{reason}"))

    @staticmethod
    def _framed(response: Response) -> bool:
        h = response.headers
        return "content-length" in h or "chunked" in h.get("transfer-encoding", "").lower()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        # Asked now: after the message is complete the parser has forgotten.
        self._keep_alive = self._parser.should_keep_alive()
        self.response._head(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._body(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._done()

    # control
    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> Response:
        assert self.transport is not None
        self.response = Response(self)
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(data)
        return self.response

    def drain(self, seconds: float) -> None:
        """Wait for the released answer's end (which calls `finish`), closing after `seconds`."""
        self._drain_timer = self.loop.call_later(seconds, self.close)

    def finish(self, complete: bool) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        response, self.response = self.response, None
        if response is not None:
            response._stop_timer()
        reusable = (
            complete
            and not self.closed
            and response is not None
            and response.headers.get("connection", "").lower() != "close"
            and self._keep_alive
            and len(self._pool) < _MAX_IDLE
        )
        if reusable:
            self.resume()
            self.idle_since = self._clock()
            self._pool.append(self)
        else:
            self.close()

    def close(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.response is not None:
            self.response._stop_timer()
        if not self.closed:
            self.closed = True
            if self in self._pool:
                self._pool.remove(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close at once, without a TLS goodbye that would wait on the server."""
        self.close()
        if self.transport is not None:
            self.transport.abort()


class _ProxyAnswer(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: its status line, up to the end of its head."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buffer += data
        head, found, _ = self._buffer.partition(b"\r\n\r\n")
        if not found:
            if len(self._buffer) > 65536:
                self.answer.set_exception(
                    UpstreamError("the proxy's answer to CONNECT is not HTTP")
                )
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            self.answer.set_exception(
                UpstreamError(f"the proxy's answer to CONNECT is not HTTP: {line[:80]!r}")
            )
            return
        self.answer.set_result((int(code), reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                UpstreamError("the proxy closed the connection before answering CONNECT")
            )


class UpstreamClient:
    """Pooled connections per origin. Owned by one event loop."""

    def __init__(self, connect_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._pools: dict[Origin, list[_Connection]] = {}
        self._live: set[_Connection] = set()
        """Every open connection, pooled or busy."""

    async def _connect(
        self, origin: Origin, pool: list[_Connection], deadline: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = self._connect_timeout
        left = None if deadline is None else deadline - _now()
        theirs = left is not None and left < limit  # then its TimeoutError is the caller's
        where = f"{origin.host}:{origin.port}"
        try:
            async with asyncio.timeout(left if theirs else limit):
                if origin.proxy is not None:
                    return await self._through_proxy(loop, origin, origin.proxy, pool)
                tls = origin.tls
                _, conn = await loop.create_connection(
                    lambda: _Connection(pool, self._clock, loop, self._live),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
                return conn
        except TimeoutError:
            if theirs:
                raise
            via = f" through proxy {origin.proxy}" if origin.proxy else ""
            raise UpstreamError(f"cannot connect to {where}{via} within {limit:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError(
                f"tls: certificate verify failed: {exc.verify_message} ({where})"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamError(f"tls: {exc.reason or exc} ({where})") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {where}: {exc}") from None

    async def _through_proxy(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        proxy: Proxy,
        pool: list[_Connection],
    ) -> _Connection:
        """A connection to `origin` by way of `proxy`: a CONNECT tunnel with TLS inside
        for https://, else the proxy's own connection (requests in absolute form)."""
        tunnel = origin.scheme == "https"
        try:
            transport, protocol = await loop.create_connection(
                (lambda: _ProxyAnswer(loop))
                if tunnel
                else (lambda: _Connection(pool, self._clock, loop, self._live)),
                proxy.host,
                proxy.port,
            )
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to proxy {proxy} (for {origin.authority}): {exc}"
            ) from None
        if not tunnel:
            return cast(_Connection, protocol)
        try:
            auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
            transport.write(
                f"CONNECT {origin.authority} HTTP/1.1\r\nhost: {origin.authority}\r\n{auth}\r\n".encode(
                    "latin-1"
                )
            )
            status, reason = await cast(_ProxyAnswer, protocol).answer
            if status != 200:
                raise UpstreamError(
                    f"proxy {proxy} refused the tunnel to {origin.authority}: HTTP {status} {reason}"
                )
            conn = _Connection(pool, self._clock, loop, self._live)
            assert origin.tls is not None  # origin_of gives every https:// origin one
            secure = await loop.start_tls(transport, conn, origin.tls, server_hostname=origin.host)
        except BaseException:
            transport.close()
            raise
        if secure is None:  # the loop says the transport closed during the handshake
            raise UpstreamError(f"proxy {proxy} closed the tunnel to {origin.authority}")
        conn.connection_made(secure)
        return conn

    async def post(
        self,
        origin: Origin,
        path: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> Response:
        """Send a POST; return once the status line and headers have arrived.

        TimeoutError when they have not within `timeout` seconds, connecting included.
        """
        deadline = None if timeout is None else _now() + timeout
        head = [
            f"POST {origin.request_start}{path} HTTP/1.1\r\nhost: {origin.host_header}\r\n"
            + origin.proxy_headers
        ]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append(f"content-length: {len(body)}\r\n\r\n")
        data = "".join(head).encode("latin-1") + body
        pool = self._pools.setdefault(origin, [])
        while pool:
            conn = pool.pop()
            # The liveness check before reuse (urllib3's is_connection_dropped, httpcore's
            # is_readable): a close that arrived while the connection sat idle has already
            # run connection_lost, so such a connection is skipped, never written to.
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            idle = self._clock() - conn.idle_since
            sent_at = self._clock()
            response = conn.send(data)
            try:
                await response._await_head(deadline)
                return response
            except UpstreamError:
                conn.close()
                if not _stale(response, idle, self._clock() - sent_at):
                    raise
                break  # sent again below, once, on a fresh connection
            except BaseException:
                conn.close()
                raise
        # A fresh connection is never sent the request twice: the server had no idle
        # connection to close, so a failure here may come after it acted on the request.
        conn = await self._connect(origin, pool, deadline)
        response = conn.send(data)
        try:
            await response._await_head(deadline)
        except BaseException:
            conn.close()
            raise
        return response

    def close(self) -> None:
        """Drop every connection at once, busy ones included."""
        for conn in list(self._live):
            conn.abort()
        for pool in self._pools.values():
            for conn in list(pool):
                conn.abort()
        self._pools.clear()

    async def aclose(self) -> None:
        """`close()`, then wait (a second at most) until every transport has closed, so
        the event loop can end without open handles."""
        self.close()
        for _ in range(100):
            if not self._live:
                return
            await asyncio.sleep(0.01)


_now = time.monotonic  # deadlines, in the seconds the event loop's timers count


def _stale(response: Response, idle: float, waited: float) -> bool:
    """Whether a POST that failed on a pooled connection provably never reached the server.

    A POST is not idempotent: sending it twice can run (and bill) an LLM call twice.
    Go's net/http, urllib3 and aiohttp never resend a non-idempotent request once
    written; they only avoid writing to a connection already seen closed. Resending
    stays worth it for one case, the stale keep-alive race: the server's keep-alive
    timer closed the idle connection just as our request went out, so the server
    closed it before reading the request. That case, and only it, looks like:
    - not a byte of answer arrived (any byte means the server was answering);
    - the connection came from the pool after at least `_STALE_IDLE` seconds of
      idleness, long enough for a server's keep-alive timeout to fire (a connection
      used a moment ago that dies after our request was written was killed by a
      server that had our request: the gateway fails over instead);
    - the close came within `_STALE_WINDOW` of the write, about a round trip: a
      server that held the request longer was working on it.
    A fresh connection never qualifies (the caller does not resend on one), like
    Go's "a fresh connection: there's no reason the server should have hung up".
    """
    return not response._got_bytes and idle >= _STALE_IDLE and waited <= _STALE_WINDOW
