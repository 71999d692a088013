"""The gateway's own HTTP/1.1 client against a hand-scripted server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable

import pytest

from overnight.gateway.upstream import UpstreamClient, UpstreamError, origin_of

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def _serve(
    handler: Handler,
    body: Callable[[UpstreamClient, str], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await handler(reader, writer, connections)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(connect_timeout=2, clock=clock)
    try:
        await body(client, f"http://127.0.0.1:{port}")
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_keep_alive_reuses_one_connection_and_sends_one_request_each() -> None:
    seen: list[tuple[int, bytes]] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        while not r.at_eof():
            try:
                request = await _read_request(r)
            except asyncio.IncompleteReadError:
                return
            seen.append((conn, request))
            w.write(_ok(b'{"n": %d}' % len(seen)))
            await w.drain()

    async def body(client: UpstreamClient, url: str) -> None:
        origin = origin_of(url + "/prefix/")
        for n in (1, 2, 3):
            response = await client.post(origin, "/v1/x", {"x-api-key": "k"}, b'{"a": 1}')
            assert (response.status, await response.read()) == (200, b'{"n": %d}' % n)
            response.release()

    asyncio.run(_serve(handler, body))
    assert [conn for conn, _ in seen] == [1, 1, 1]
    first = seen[0][1]
    assert first.startswith(b"POST /prefix/v1/x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"x-api-key: k\r\n" in first and first.endswith(b'\r\n\r\n{"a": 1}')


def test_gzip_chunked_and_close_delimited_bodies() -> None:
    payload = b'{"hello": "world"}' * 50

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _read_request(r)
        if conn == 1:
            w.write(_ok(gzip.compress(payload), b"content-encoding: gzip\r\n"))
        elif conn == 2:
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (payload[:10], payload[10:]):
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            w.write(b"0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + payload)
        await w.drain()

    async def body(client: UpstreamClient, url: str) -> None:
        origin = origin_of(url)
        for _ in range(3):
            response = await client.post(origin, "/v1/x", {}, b"{}")
            assert await response.read() == payload
            response.close()  # a new connection each time, so each shape is served

    asyncio.run(_serve(handler, body))


def test_a_cut_body_is_an_error_not_a_short_answer() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await w.drain()

    async def body(client: UpstreamClient, url: str) -> None:
        response = await client.post(origin_of(url), "/v1/x", {}, b"{}")
        assert await response.chunk() == b"x" * 10
        with pytest.raises(UpstreamError, match="closed the connection"):
            await response.chunk()
        response.close()

    asyncio.run(_serve(handler, body))


def test_a_pooled_connection_closed_while_idle_is_retried_once_on_a_fresh_one() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _read_request(r)
        w.write(_ok(b"%d" % conn))
        await w.drain()
        if conn == 1:
            # Keep the connection looking alive, then drop the next request unanswered.
            await _read_request(r)

    now = [0.0]

    async def body(client: UpstreamClient, url: str) -> None:
        origin = origin_of(url)
        first = await client.post(origin, "/v1/x", {}, b"{}")
        assert await first.read() == b"1"
        first.release()
        now[0] += 5  # idle long enough for a server's keep-alive timeout to close it
        second = await client.post(origin, "/v1/x", {}, b"{}")
        assert await second.read() == b"2"
        second.release()

    asyncio.run(_serve(handler, body, clock=lambda: now[0]))


def test_refused_connection_is_an_upstream_error() -> None:
    async def body() -> None:
        client = UpstreamClient(connect_timeout=2)
        with pytest.raises(UpstreamError, match=r"cannot connect to 127\.0\.0\.1:9"):
            await client.post(origin_of("http://127.0.0.1:9"), "/v1/x", {}, b"{}")
        client.close()

    asyncio.run(body())
