"""Fixes found by benchmarking the gateway, each through its real interfaces.

Official SDKs (or raw HTTP) -> gateway on loopback -> a `FakeProvider` or a
hand-written upstream (`RawUpstream`) that counts the TCP connections it
accepts and the requests it reads. Covers: the idle timeout of a whole body,
connections kept after a complete error answer, never re-sending a POST the
upstream may have received, Retry-After on every 503, and the exact error
shape each SDK parses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from overnight.gateway.upstream import UpstreamClient, origin_of
from overnight.sessions import wait_until
from overnight.testing.fake_provider import FakeProvider
from overnight.testing.replies import Reply
from tests.helpers.gateway import HELLO, Clock, Env, LoopbackServer, gateway, upstream


class RawUpstream(LoopbackServer):
    """An HTTP/1.1 server on loopback, in its own thread, that runs `handler` per connection.

    `handler(up, reader, writer, n)` serves the n-th accepted connection (from 1);
    `up.read_request(reader)` reads one request and records its body in `up.bodies`.
    """

    Handler = Callable[
        ["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]
    ]

    def __init__(self, handler: RawUpstream.Handler) -> None:
        super().__init__()
        self._handler = handler
        self.connections = 0
        self.bodies: list[bytes] = []

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's body, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.bodies.append(body)
        return body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def message(text: str) -> bytes:
    """A whole Anthropic Messages answer."""
    return json.dumps(
        {
            "id": "msg_raw",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake-1",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
    ).encode()


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


OVERLOADED = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashing server does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
def fallback() -> Iterator[FakeProvider]:
    with FakeProvider("anthropic") as fake:
        yield fake


def two_candidates(raw: RawUpstream, fake: FakeProvider, **settings: Any) -> Any:
    """A gateway routing `claude` to the raw upstream first, then to the fake."""
    return gateway(
        [
            upstream("raw", "anthropic", raw.url, "main"),
            upstream("fake", "anthropic", fake.url, "main"),
        ],
        {"claude": ["raw/claude-fake-1", "fake/claude-fake-1"]},
        **({"breaker": {"failures": 100, "cooldown": "30s"}} | settings),
    )


# --- 1. the idle timeout bounds the silence between pieces of a whole body ----------------


async def _dribble(
    up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
) -> None:
    """A chunked whole answer in 10 pieces, one every 0.1 s: 1 s in all, never 0.5 s silent."""
    await up.read_request(r)
    body = message("slow but steady")
    w.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    step = len(body) // 10 + 1
    for i in range(0, len(body), step):
        piece = body[i : i + step]
        w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await w.drain()
        await asyncio.sleep(0.1)  # the pace under test, not a synchronization
    w.write(b"0\r\n\r\n")
    await w.drain()
    await r.read()  # keep the connection until the gateway is done with it


async def _goes_silent(
    up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
) -> None:
    """A chunked whole answer that stops after its first piece and says nothing more."""
    await up.read_request(r)
    w.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    w.write(b'5\r\n{"id"\r\n')
    await w.drain()
    await r.read()  # until the gateway gives up and closes the connection


def test_a_whole_body_arriving_steadily_for_longer_than_idle_succeeds(
    fallback: FakeProvider,
) -> None:
    with (
        RawUpstream(_dribble) as raw,
        two_candidates(raw, fallback, timeouts={"idle": "500ms", "first_byte": "5s"}) as env,
    ):
        fallback.enqueue(Reply(text="from the fallback"))
        out = env.anthropic().messages.create(model="claude", max_tokens=20, messages=HELLO)
        assert out.content[0].type == "text" and out.content[0].text == "slow but steady"
        assert env.outcomes() == [("raw", "ok")]


def test_a_whole_body_that_goes_silent_for_idle_fails_over(fallback: FakeProvider) -> None:
    with (
        RawUpstream(_goes_silent) as raw,
        two_candidates(raw, fallback, timeouts={"idle": "300ms", "first_byte": "5s"}) as env,
    ):
        fallback.enqueue(Reply(text="from the fallback"))
        out = env.anthropic().messages.create(model="claude", max_tokens=20, messages=HELLO)
        assert out.content[0].type == "text" and out.content[0].text == "from the fallback"
        assert env.outcomes() == [("raw", "failed_over"), ("fake", "ok")]
        assert "stalled" in (env.sink.attempts[0].error or "")


# --- 2. a complete error answer leaves its connection in the pool -------------------------


@pytest.mark.parametrize(("close", "connections"), [(False, 1), (True, 4)])
def test_failovers_on_529_reuse_the_upstream_connection(
    fallback: FakeProvider, close: bool, connections: int
) -> None:
    extra = b"connection: close\r\n" if close else b""

    async def overloaded(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(r) is not None:
            w.write(answer(529, OVERLOADED, extra))
            await w.drain()
            if close:
                return

    with RawUpstream(overloaded) as raw, two_candidates(raw, fallback) as env:
        client = env.anthropic()
        for i in range(4):
            fallback.enqueue(Reply(text=f"answer {i}"))
            out = client.messages.create(model="claude", max_tokens=20, messages=HELLO)
            assert out.content[0].type == "text" and out.content[0].text == f"answer {i}"
        assert len(raw.bodies) == 4
        # Kept alive: one TCP (in production TLS) handshake for all four failovers;
        # an upstream that says `Connection: close` gets a new connection each time.
        assert raw.connections == connections


def _stream_events(text: str) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_raw", "type": "message", "role": "assistant", "model": "claude-fake-1",
            "content": [], "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1},
        }}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": text}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


@pytest.mark.parametrize("client", ["anthropic", "openai"])
def test_a_stream_whose_end_chunk_comes_late_keeps_its_upstream_connection(client: str) -> None:
    """The client has its whole stream at `message_stop`; the chunked body's terminator
    comes later, in a write of its own (as the fake provider's and real servers' do).
    The connection waits for it and serves the next request, instead of a new one
    (a TCP connection per stream) - relayed as is, and translated for Chat clients."""
    served: list[int] = []

    async def streams(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(r) is not None:
            body = _stream_events(f"stream {len(served) + 1}")
            w.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(body), body)
            )
            await w.drain()
            await asyncio.sleep(0.05)  # the late terminator under test, not a synchronization
            w.write(b"0\r\n\r\n")
            await w.drain()
            served.append(n)

    with (
        RawUpstream(streams) as raw,
        gateway(
            [upstream("raw", "anthropic", raw.url, "main")], {"claude": ["raw/claude-fake-1"]}
        ) as env,
    ):
        for i in range(1, 4):
            if client == "anthropic":
                with env.anthropic().messages.stream(
                    model="claude", max_tokens=20, messages=HELLO
                ) as stream:
                    text = "".join(stream.text_stream)
            else:
                chunks = env.openai().chat.completions.create(
                    model="claude", messages=HELLO, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == f"stream {i}"
            wait_until(lambda i=i: len(served) == i)  # its terminator is out
        assert served == [1, 1, 1]
        assert env.outcomes() == [("raw", "ok")] * 3


# --- 3. a POST the upstream may have received is never sent to it again --------------------


def test_a_reset_after_the_request_on_a_fresh_connection_fails_over_without_resending(
    fallback: FakeProvider,
) -> None:
    async def crashes(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(r)
        reset(w)

    with RawUpstream(crashes) as raw, two_candidates(raw, fallback) as env:
        fallback.enqueue(Reply(text="from the fallback"))
        out = env.anthropic().messages.create(model="claude", max_tokens=20, messages=HELLO)
        assert out.content[0].type == "text" and out.content[0].text == "from the fallback"
        assert (len(raw.bodies), raw.connections) == (1, 1)
        assert env.outcomes() == [("raw", "failed_over"), ("fake", "ok")]


def test_a_reset_after_the_request_on_a_just_used_pooled_connection_is_not_resent(
    fallback: FakeProvider,
) -> None:
    async def second_crashes(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        if n > 1:  # before the fix, the gateway came back with the same request
            await up.read_request(r)
            w.write(answer(200, message("sent twice")))
            await w.drain()
            await r.read()
            return
        await up.read_request(r)
        w.write(answer(200, message("first")))
        await w.drain()
        await up.read_request(r)  # the server has the request, then crashes
        reset(w)

    with RawUpstream(second_crashes) as raw, two_candidates(raw, fallback) as env:
        client = env.anthropic()
        first = client.messages.create(model="claude", max_tokens=20, messages=HELLO)
        assert first.content[0].type == "text" and first.content[0].text == "first"
        fallback.enqueue(Reply(text="from the fallback"))
        second = client.messages.create(model="claude", max_tokens=20, messages=HELLO)
        assert second.content[0].type == "text" and second.content[0].text == "from the fallback"
        assert (len(raw.bodies), raw.connections) == (2, 1)
        assert env.outcomes() == [("raw", "ok"), ("raw", "failed_over"), ("fake", "ok")]


def test_a_stale_pooled_connection_closed_unread_is_retried_once_on_a_fresh_one() -> None:
    """The keep-alive race: the server closes an idle connection as our request goes out."""
    clock = Clock()

    async def closes_idle(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(r)
        w.write(answer(200, b"%d" % n))
        await w.drain()
        if n == 1:
            await r.read(1)  # the next request arrives; close without reading it
            reset(w)

    async def body(url: str) -> list[bytes]:
        client = UpstreamClient(connect_timeout=2, clock=clock)
        origin, got = origin_of(url), []
        try:
            for _ in range(2):
                response = await client.post(origin, "/v1/messages", {}, b"{}")
                got.append(await response.read())
                response.release()
                clock.advance(5)  # idle in the pool as long as a server's keep-alive timeout
        finally:
            client.close()
        return got

    with RawUpstream(closes_idle) as raw:
        assert asyncio.run(body(raw.url)) == [b"1", b"2"]
        assert (len(raw.bodies), raw.connections) == (2, 2)  # the first copy was never read


# --- 4. Retry-After on every 503 ----------------------------------------------------------


def _raise(client: str, env: Env) -> Exception:
    """The SDK exception for one request of `client`'s protocol to the `claude` route."""
    try:
        if client == "anthropic":
            env.anthropic().messages.create(model="claude", max_tokens=20, messages=HELLO)
        elif client == "chat":
            env.openai().chat.completions.create(model="claude", messages=HELLO)  # type: ignore[arg-type]
        else:
            env.openai().responses.create(model="claude", input="hello")
    except (anthropic.APIStatusError, openai.APIStatusError) as exc:
        return exc
    raise AssertionError("the request succeeded")


PROTOCOLS = ["anthropic", "chat", "responses"]


@pytest.mark.parametrize("client", PROTOCOLS)
def test_every_candidate_failing_gives_a_503_with_the_soonest_retry_after(client: str) -> None:
    def overloaded(after: bytes) -> RawUpstream.Handler:
        async def handler(
            up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
        ) -> None:
            while await up.read_request(r) is not None:
                w.write(answer(529, OVERLOADED, b"retry-after: " + after + b"\r\n"))
                await w.drain()

        return handler

    with (
        RawUpstream(overloaded(b"12")) as a,
        RawUpstream(overloaded(b"7")) as b,
        gateway(
            [upstream("a", "anthropic", a.url, "k"), upstream("b", "anthropic", b.url, "k")],
            {"claude": ["a/claude-fake-1", "b/claude-fake-1"]},
        ) as env,
    ):
        exc = _raise(client, env)
        assert isinstance(exc, anthropic.InternalServerError | openai.InternalServerError)
        assert exc.status_code == 503 and "failed" in exc.message
        assert exc.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("client", PROTOCOLS)
def test_a_503_after_breakers_open_says_when_the_first_half_opens(client: str) -> None:
    async def refuses(
        up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(r) is not None:
            w.write(answer(500, b'{"error": "boom"}'))
            await w.drain()

    with (
        RawUpstream(refuses) as a,
        gateway(
            [upstream("a", "anthropic", a.url, "k")],
            {"claude": ["a/claude-fake-1"]},
            breaker={"failures": 1, "cooldown": "45s"},
        ) as env,
    ):
        exc = _raise(client, env)
        assert isinstance(exc, anthropic.InternalServerError | openai.InternalServerError)
        assert exc.status_code == 503 and exc.response.headers["retry-after"] == "45"


# --- 5. every gateway-made error parses into the SDK's typed exception, message intact -----

PICKY = "max_tokens is too large for this model"


async def _limited(
    up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
) -> None:
    while await up.read_request(r) is not None:
        w.write(answer(429, b'{"error": {"message": "slow down"}}', b"retry-after: 9\r\n"))
        await w.drain()


async def _broken(
    up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
) -> None:
    while await up.read_request(r) is not None:
        w.write(answer(500, b'{"error": {"message": "boom"}}'))
        await w.drain()


async def _picky(up: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    # One body both vendors' error parsers read: the gateway rewrites it for the client.
    body = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": PICKY}}
    )
    while await up.read_request(r) is not None:
        w.write(answer(400, body.encode()))
        await w.drain()


@pytest.fixture(scope="module")
def shapes() -> Iterator[Env]:
    with (
        RawUpstream(_limited) as limited,
        RawUpstream(_broken) as broken,
        RawUpstream(_picky) as picky_a,
        RawUpstream(_picky) as picky_o,
        gateway(
            [
                upstream("limited", "anthropic", limited.url, "k"),
                upstream("broken", "anthropic", broken.url, "k"),
                upstream("picky_a", "anthropic", picky_a.url, "k"),
                upstream("picky_o", "openai", picky_o.url + "/v1", "k"),
            ],
            {
                "limited": ["limited/claude-fake-1"],
                "broken": ["broken/claude-fake-1"],
                "picky-anthropic": ["picky_a/claude-fake-1"],
                "picky-openai": ["picky_o/gpt-fake-1"],
            },
            max_body=4096,
            prices={"claude-fake-1": {"input": 100, "output": 100}},
            budgets={"agents": {"bob": {"total_usd": 0.000001}}},
        ) as env,
    ):
        env.extra["bob"] = env.keys.issue("bob")
        yield env


# case -> (status, gateway error kind, what the message says, how to provoke it)
CASES: dict[str, tuple[int, str, str, dict[str, Any]]] = {
    "invalid": (400, "invalid", 'a JSON object with a "model" string', {"bad_model": True}),
    "auth": (401, "auth", "missing or unknown gateway key", {"key": "sk-wrong"}),
    "budget": (402, "budget", "budget exhausted", {"model": "limited", "bob": True}),
    "not_found": (404, "not_found", "is not configured in [gateway.models]", {"model": "nope"}),
    "too_large": (413, "too_large", "larger than the gateway's limit", {"big": True}),
    "rate_limit": (429, "rate_limit", "rate-limited", {"model": "limited"}),
    "overloaded": (503, "overloaded", "every candidate of 'broken' failed", {"model": "broken"}),
    "upstream_rejected": (400, "invalid", PICKY, {"cross": True}),
}
ANTHROPIC_TYPES = {
    "invalid": "invalid_request_error",
    "auth": "authentication_error",
    "budget": "billing_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "overloaded": "overloaded_error",
}
OPENAI_TYPES = {  # (type, code)
    "invalid": ("invalid_request_error", None),
    "auth": ("invalid_request_error", "invalid_api_key"),
    "budget": ("insufficient_quota", "insufficient_quota"),
    "not_found": ("invalid_request_error", "model_not_found"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("requests", "rate_limit_exceeded"),
    "overloaded": ("server_error", "overloaded"),
}
# The typed exception each SDK raises per status (anthropic 2.x has more of them).
COMMON_CLASS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
}
ANTHROPIC_CLASS = COMMON_CLASS | {
    402: "PaymentRequiredError",
    413: "ContentTooLargeError",
    503: "ServiceUnavailableError",
}
OPENAI_CLASS = COMMON_CLASS | {
    402: "APIStatusError",
    413: "APIStatusError",
    503: "InternalServerError",
}


def _provoke(env: Env, client: str, how: dict[str, Any]) -> Exception:
    key = env.extra["bob"] if how.get("bob") else how.get("key", env.key)
    model = how.get("model", "limited")
    if how.get("cross"):
        model = "picky-openai" if client == "anthropic" else "picky-anthropic"
    text = "x" * 5000 if how.get("big") else "hello"
    extra = {"model": 5} if how.get("bad_model") else None
    messages = [{"role": "user", "content": text}]
    try:
        if client == "anthropic":
            env.anthropic(api_key=key).messages.create(
                model=model,
                max_tokens=20,
                messages=messages,  # type: ignore[arg-type]
                extra_body=extra,
            )
        elif client == "chat":
            env.openai(api_key=key).chat.completions.create(
                model=model,
                max_tokens=20,
                messages=messages,  # type: ignore[arg-type]
                extra_body=extra,
            )
        else:
            env.openai(api_key=key).responses.create(
                model=model, max_output_tokens=20, input=text, extra_body=extra
            )
    except (anthropic.APIStatusError, openai.APIStatusError) as exc:
        return exc
    raise AssertionError("the request succeeded")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("client", PROTOCOLS)
def test_every_gateway_error_has_the_shape_its_sdk_parses(
    shapes: Env, client: str, case: str
) -> None:
    status, kind, says, how = CASES[case]
    exc = _provoke(shapes, client, how)
    assert isinstance(exc, anthropic.APIStatusError | openai.APIStatusError)
    assert exc.status_code == status
    classes = ANTHROPIC_CLASS if client == "anthropic" else OPENAI_CLASS
    assert type(exc).__name__ == classes[status]
    if client == "anthropic":
        assert isinstance(exc, anthropic.APIStatusError)
        body = exc.body
        assert isinstance(body, dict) and set(body) == {"type", "error"}
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        assert body["error"]["type"] == ANTHROPIC_TYPES[kind]
        message = body["error"]["message"]
    else:
        assert isinstance(exc, openai.APIStatusError)
        # The SDK lifts the `error` object out of the body and reads its fields.
        body = exc.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
        assert (exc.type, exc.code) == OPENAI_TYPES[kind] and exc.param is None
        message = body["message"]
    assert isinstance(message, str) and says in message
    if case == "upstream_rejected":
        assert message == PICKY  # the upstream's words, not a paraphrase
    assert message in exc.message or json.dumps(message)[1:-1] in exc.message
    if status in (429, 503):
        assert int(exc.response.headers["retry-after"]) >= 1
