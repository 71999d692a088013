"""A small HTTP/1.1 server on asyncio, run in a background thread, for the fake provider.

Owns the socket (plain, or TLS with a given server context): reading requests (Content-Length or chunked bodies, keep-alive,
`Expect: 100-continue`), writing responses whole or as a chunked stream, and the
ways a response can go wrong on purpose: the connection reset before any byte,
or closed in the middle of a body. Knows nothing about LLMs or wire formats;
a handler decides what each request gets.

Why not uvicorn: a fake provider must misbehave in ways an ASGI server exists
to prevent (reset a connection instead of answering 500, end a chunked body
without its last chunk), and the gateway benchmark subtracts this server's own
latency, so fewer layers give a smaller, steadier figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Names lower-cased; a repeated header keeps its last value."""
    body: bytes


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.1; answered 400, then closed."""


class Responder:
    """How a handler answers one request. Exactly one of: `send`, or `start` + `write`
    ... + `finish`, or a deliberate failure (`reset`, `cut`)."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool) -> None:
        self._writer = writer
        self._keep_alive = keep_alive
        self._chunked = False
        self.started = False
        self.finished = False
        self.broken = False

    async def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A whole response in one write."""
        self._writer.write(self._head(status, headers, len(body)) + body)
        self.started = self.finished = True
        await self._writer.drain()

    async def start(self, status: int, headers: dict[str, str], length: int | None) -> None:
        """Status line and headers; the body follows by `write`. `length=None` streams it chunked."""
        self._chunked = length is None
        self._writer.write(self._head(status, headers, length))
        self.started = True
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        # One write per piece, sent at once (TCP_NODELAY), so a client sees each
        # SSE event as a separate read, as it would from a real provider.
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._writer.write(data)
        await self._writer.drain()

    async def finish(self) -> None:
        if self._chunked:
            self._writer.write(b"0\r\n\r\n")
            await self._writer.drain()
        self.finished = True

    def reset(self) -> None:
        """Drop the connection with a TCP RST: the client gets no response at all."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send RST instead of FIN, like a crashed peer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()
        self.broken = True

    async def cut(self) -> None:
        """Close mid-body: what was sent arrives, then FIN without the body's end.

        A FIN, not a RST, so the bytes already sent are not discarded by the
        client's kernel before the client reads them.
        """
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._writer.close()
        self.broken = True

    def _head(self, status: int, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if length is None:
            lines.append("transfer-encoding: chunked")
        else:
            lines.append(f"content-length: {length}")
        if not self._keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Handler = Callable[[Request, Responder], Awaitable[None]]


class Server:
    """Serves `handler` on host:port from a daemon thread with its own event loop.

    `start()` returns once the socket listens (port 0 picks a free port, read it
    from `.port`); `stop()` drops every open connection, stalled ones included,
    and joins the thread.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self._tls = tls
        self._requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this server is already started")
        self._ready.clear()
        self._startup_error = None
        # Bound here, in the caller's thread, so a busy port raises to the caller.
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"fake-provider:{self.port}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = None

    def _run(self, sock: socket.socket) -> None:
        loop = _new_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(sock))
        except BaseException as exc:  # reported to start(); after start, our bug
            if not self._ready.is_set():
                self._startup_error = exc
            else:
                raise
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._on_connection, sock=sock, limit=MAX_HEAD_BYTES, ssl=self._tls
            )
        except BaseException:
            sock.close()
            raise
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # asyncio sets this only for sockets made with proto=IPPROTO_TCP; without
            # it each SSE event waits on Nagle + delayed ACK (~40 ms on Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or we are stopping: nothing to answer
        except BadRequest as exc:
            with contextlib.suppress(ConnectionError):
                body = str(exc).encode()
                await Responder(writer, keep_alive=False).send(
                    400, {"content-type": "text/plain"}, body
                )
        finally:
            self._connections.discard(task)
            if self._stopping is not None and self._stopping.is_set():
                # Stopping: a stalled client may never drain a graceful close.
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request, keep_alive = await _read_request(reader, writer)
            if request is None:
                return
            responder = Responder(writer, keep_alive)
            try:
                await self._handler(request, responder)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # Our bug: tell the client plainly, then let asyncio log the traceback.
                if not responder.started:
                    body = f"fake provider bug: {exc!r}".encode()
                    await Responder(writer, False).send(500, {"content-type": "text/plain"}, body)
                raise
            if responder.broken or not responder.finished or not keep_alive:
                return


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, as the gateway runs: the stock loop cost a fake serving
    streams about twice the CPU, and a fake that saturates first is a noisy baseline
    for the benchmarks that measure the gateway against it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[Request | None, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None, False  # a clean close between requests
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(f"bad request line {lines[0]!r}") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(f"unsupported protocol {version!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad content-length") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadRequest("body too large")
        body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    return Request(method, url.path, query, headers, body), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers, ignored
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
