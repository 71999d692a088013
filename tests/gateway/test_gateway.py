"""The gateway through its real interfaces: official SDKs -> gateway on loopback -> fake providers.

Same-protocol proxying, metering, failover on every fault before the first
byte, credential rotation, the circuit breaker, brownout, explicit errors for
streams that fail after their first byte, and bad input.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from overnight.testing.fake_provider import FakeProvider
from overnight.testing.replies import Reply, ToolCall, Usage
from tests.helpers.gateway import HELLO, Env, gateway, get, post, upstream


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider, FakeProvider]]:
    """Two Anthropic upstreams and one OpenAI upstream."""
    with (
        FakeProvider("anthropic") as a1,
        FakeProvider("anthropic") as a2,
        FakeProvider("openai") as o1,
    ):
        yield a1, a2, o1


@pytest.fixture
def env(fakes: tuple[FakeProvider, FakeProvider, FakeProvider]) -> Iterator[Env]:
    a1, a2, o1 = fakes
    with gateway(
        [
            upstream("a1", "anthropic", a1.url, "main"),
            upstream("a2", "anthropic", a2.url, "main"),
            upstream("o1", "openai", o1.url + "/v1", "main"),
        ],
        {
            "claude": ["a1/claude-fake-1", "a2/claude-fake-1"],
            "gpt": ["o1/gpt-fake-1"],
        },
        breaker={"failures": 3, "cooldown": "30s"},
        timeouts={"idle": "300ms", "first_byte": "2s"},
    ) as e:
        e.extra["fakes"] = fakes
        yield e


# --- same protocol, whole and streamed ---------------------------------------------------


def test_anthropic_whole_and_streamed_are_relayed_and_metered(env: Env) -> None:
    a1, _, _ = env.extra["fakes"]
    usage = Usage(input_tokens=11, output_tokens=7, cache_read_tokens=100, cache_write_tokens=50)
    a1.enqueue(Reply(text="hello there", usage=usage), Reply(text="streamed answer", usage=usage))
    client = env.anthropic(default_headers={"x-overnight-trial": "trial-7"})

    message = client.messages.create(model="claude", max_tokens=50, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "hello there"
    assert message.usage.cache_read_input_tokens == 100

    with client.messages.stream(model="claude", max_tokens=50, messages=HELLO) as stream:
        assert stream.get_final_text() == "streamed answer"

    first, second = env.sink.attempts
    for attempt, streamed in ((first, False), (second, True)):
        assert attempt.outcome == "ok" and attempt.stream is streamed
        assert (attempt.agent, attempt.trial, attempt.route) == ("alice", "trial-7", "claude")
        assert (attempt.upstream, attempt.model, attempt.credential) == (
            "a1",
            "claude-fake-1",
            "main",
        )
        # Anthropic's input_tokens excludes the cache: each kind is counted once, apart.
        assert (attempt.input_tokens, attempt.output_tokens) == (11, 7)
        assert (attempt.cache_read_tokens, attempt.cache_write_tokens) == (100, 50)
        assert attempt.total_input_tokens == 161
        assert not attempt.usage_estimated and attempt.ttft_s is not None
        assert attempt.cost_usd is None and attempt.unpriced  # the fake model has no price
    # The upstream got the real secret and the upstream model name, never the agent's key.
    sent = a1.requests[0]
    assert sent["headers"]["x-api-key"] == "sk-a1-main"
    assert env.key not in json.dumps(sent)
    assert sent["body"]["model"] == "claude-fake-1"


def test_openai_chat_and_responses_are_relayed_and_metered(env: Env) -> None:
    _, _, o1 = env.extra["fakes"]
    usage = Usage(input_tokens=20, output_tokens=9, cache_read_tokens=30, reasoning_tokens=4)
    for _ in range(4):
        o1.enqueue(Reply(text="answer", usage=usage))
    client = env.openai()

    done = client.chat.completions.create(model="gpt", messages=HELLO)
    assert done.choices[0].message.content == "answer"
    chunks = list(client.chat.completions.create(model="gpt", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "answer"
    # The client did not ask for usage: the gateway asked for it to meter, and kept it.
    assert all(c.choices for c in chunks)
    assert o1.requests[1]["body"]["stream_options"] == {"include_usage": True}

    response = client.responses.create(model="gpt", input="hello")
    assert response.output_text == "answer"
    with client.responses.stream(model="gpt", input="hello") as stream:
        assert stream.get_final_response().output_text == "answer"

    assert [a.upstream_protocol for a in env.sink.attempts] == [
        "chat",
        "chat",
        "responses",
        "responses",
    ]
    for attempt in env.sink.attempts:
        assert attempt.outcome == "ok"
        # OpenAI's prompt tokens include the cached ones; metering splits them out.
        assert (attempt.input_tokens, attempt.cache_read_tokens) == (20, 30)
        assert (attempt.output_tokens, attempt.reasoning_tokens) == (9, 4)


def test_tool_calls_pass_through_untouched(env: Env) -> None:
    a1, _, _ = env.extra["fakes"]
    a1.enqueue(Reply(tool_calls=[ToolCall("Bash", {"command": "ls -la"})]))
    with env.anthropic().messages.stream(model="claude", max_tokens=50, messages=HELLO) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"command": "ls -la"}


# --- failover before the first byte ------------------------------------------------------

FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"code": 529}),
    ("status", {"code": 500}),
    ("status", {"code": 503}),
    ("status", {"code": 429, "retry_after": 20}),
    ("status", {"code": 404}),  # the candidate names a model its upstream lacks
    ("reset", {}),
    ("expired_key", {}),
    ("stall", {"after_chunks": 0, "seconds": 5}),
    ("cut", {"after_chunks": 0}),
    ("malformed", {"after_chunks": 0}),
    ("stream_error", {"after_chunks": 0}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "params"), FAULTS, ids=[f"{k}-{p}" for k, p in FAULTS])
def test_failover_to_second_upstream_with_no_client_error(
    env: Env, kind: str, params: dict[str, Any], stream: bool
) -> None:
    a1, a2, _ = env.extra["fakes"]
    a1.fault(kind, **params)  # type: ignore[arg-type]
    a2.enqueue(Reply(text="from the fallback", usage=Usage(input_tokens=5, output_tokens=3)))
    client = env.anthropic()
    if stream:
        with client.messages.stream(model="claude", max_tokens=50, messages=HELLO) as s:
            text = s.get_final_text()
    else:
        content = client.messages.create(model="claude", max_tokens=50, messages=HELLO).content
        assert content[0].type == "text"
        text = content[0].text
    assert text == "from the fallback"
    failed, served = env.sink.attempts
    assert (failed.upstream, failed.outcome, served.upstream, served.outcome) == (
        "a1",
        "failed_over",
        "a2",
        "ok",
    )
    assert failed.error and served.attempt == 2 and failed.request_id == served.request_id
    if kind == "expired_key":
        assert failed.status == 401
        assert (
            env.events[0][0],
            {k: env.events[0][1][k] for k in ("upstream", "credential")},
        ) == ("credential_rotated_out", {"upstream": "a1", "credential": "main"})
        assert env.health()["routes"][0]["candidates"][0]["credentials"][0]["state"] == (
            "rotated_out"
        )
    if kind == "status" and params["code"] == 429:
        # Retry-After is honoured: the credential sits out and is not even tried.
        cooling = env.health()["routes"][0]["candidates"][0]["credentials"][0]["cooling_s"]
        assert 19 <= cooling <= 20
        a2.enqueue(Reply(text="again"))
        client.messages.create(model="claude", max_tokens=50, messages=HELLO)
        assert len(a1.requests) == 1 and env.sink.attempts[-1].upstream == "a2"


def test_credentials_rotate_within_an_upstream(fakes: tuple[FakeProvider, ...]) -> None:
    with (
        FakeProvider("anthropic", api_keys=["sk-good"]) as a,
        gateway(
            [upstream("a", "anthropic", a.url, "old", "new")],
            {"claude": ["a/claude-fake-1"]},
            secrets={("a", "old"): "sk-expired", ("a", "new"): "sk-good"},
        ) as env,
    ):
        client = env.anthropic()
        for _ in range(3):
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert [(x.credential, x.outcome) for x in env.sink.attempts] == [
            ("old", "failed_over"),
            ("new", "ok"),
            ("new", "ok"),
            ("new", "ok"),
        ]
        assert env.kinds() == ["credential_rotated_out"]
        assert env.events[0][1]["credential"] == "old"
        assert "sk-expired" not in json.dumps(env.events) + env.health().__repr__()


# --- circuit breaker and brownout ---------------------------------------------------------


def test_breaker_opens_skips_then_half_opens_with_one_probe(env: Env) -> None:
    a1, a2, _ = env.extra["fakes"]
    a1.fault("status", code=500, times=None)
    client = env.anthropic()
    for _ in range(3):  # breaker.failures = 3
        client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert len(a1.requests) == 3
    assert ("breaker", "a1", "open") in [(k, p.get("upstream"), p.get("to")) for k, p in env.events]
    assert env.health()["routes"][0]["candidates"][0]["state"] == "open"

    # While open, the sick upstream is not even tried: no extra latency, no extra attempt.
    client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert len(a1.requests) == 3 and env.sink.attempts[-1].attempt == 1

    # After the cooldown, one probe goes through; it fails, so the breaker reopens.
    env.clock.advance(30)
    assert env.health()["routes"][0]["candidates"][0]["state"] == "half_open"
    client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert len(a1.requests) == 4
    client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert len(a1.requests) == 4  # reopened, for twice as long

    env.clock.advance(59)
    client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert len(a1.requests) == 4
    env.clock.advance(1)
    a1.clear_faults()
    a1.enqueue(Reply(text="healed"))
    message = client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "healed"
    assert env.health()["routes"][0]["candidates"][0]["state"] == "closed"
    moves = [p["to"] for k, p in env.events if k == "breaker" and p["upstream"] == "a1"]
    assert moves == ["open", "half_open", "open", "half_open", "closed"]
    assert len(a2.requests) == 7


def test_brownout_when_every_candidate_is_down_and_recovery(env: Env) -> None:
    a1, a2, _ = env.extra["fakes"]
    a1.fault("status", code=529, times=None)
    a2.fault("status", code=529, times=None)
    client = env.anthropic()
    for _ in range(3):
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert err.value.status_code == 503
        assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert env.kinds().count("brownout") == 1
    brownout = next(p for k, p in env.events if k == "brownout")
    assert brownout["route"] == "claude" and brownout["brownout"] is True
    assert env.health()["status"] == "brownout"

    # In brownout the gateway answers at once, without touching the upstreams.
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert "brownout" in str(err.value) and err.value.response.headers["retry-after"] == "30"
    assert (len(a1.requests), len(a2.requests)) == (3, 3)

    env.clock.advance(30)
    a2.clear_faults()
    client.messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert env.kinds().count("recovery") == 1
    assert env.health()["status"] == "ok"


# --- failures after the first byte -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "error"),
    [
        ("cut", {"after_chunks": 3}, "stream cut"),
        ("stall", {"after_chunks": 3, "seconds": 5}, "stalled"),
        ("malformed", {"after_chunks": 3}, "not JSON"),
        ("stream_error", {"after_chunks": 3}, "upstream error"),
    ],
)
def test_anthropic_stream_failing_midway_ends_with_an_error_event(
    env: Env, kind: str, params: dict[str, Any], error: str
) -> None:
    a1, a2, _ = env.extra["fakes"]
    a1.fault(kind, **params)  # type: ignore[arg-type]
    a1.enqueue(Reply(text="one two three four five six seven eight nine ten"))
    seen: list[str] = []
    client = env.anthropic()
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model="claude", max_tokens=50, messages=HELLO) as s,
    ):
        seen.extend(s.text_stream)
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] in ("api_error", "overloaded_error")
    assert "incomplete" in body["error"]["message"]
    assert seen, "part of the answer was streamed before the failure"
    (attempt,) = env.sink.attempts
    assert attempt.outcome == "stream_error" and error in (attempt.error or "")
    assert attempt.usage_estimated and attempt.output_tokens > 0 and attempt.input_tokens > 0
    assert a2.requests == []  # too late to fail over: the client already had bytes


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_stream_cut_midway_is_an_error_not_a_short_success(env: Env, api: str) -> None:
    _, _, o1 = env.extra["fakes"]
    o1.fault("cut", after_chunks=3)
    o1.enqueue(Reply(text="one two three four five six seven eight nine ten"))
    client = env.openai()
    if api == "chat":
        with pytest.raises(openai.APIError) as err:
            for _ in client.chat.completions.create(model="gpt", messages=HELLO, stream=True):
                pass
        assert "incomplete" in err.value.message
    else:
        events = list(client.responses.create(model="gpt", input="hello", stream=True))
        assert events[-1].type == "response.failed"
        assert "incomplete" in events[-1].response.error.message  # type: ignore[union-attr]
        assert not any(e.type == "response.completed" for e in events)
    assert env.outcomes() == [("o1", "stream_error")]


@pytest.mark.parametrize("asgi_server", ["overnight", "uvicorn"])
def test_client_disconnect_cancels_the_upstream_and_meters_what_was_streamed(
    asgi_server: str,
) -> None:
    """A hand-made upstream that streams a little, then waits to see the gateway hang up."""
    hung_up = threading.Event()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 42, "output_tokens": 1},
            },
        }
        events = [
            ("message_start", start),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "x" * 400},
                },
            ),
        ]
        body = b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n"
        )
        await writer.drain()
        if await reader.read(1) == b"":  # the gateway closed the connection
            hung_up.set()
        writer.close()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            server = await asyncio.start_server(handle, sock=sock)
            ready.set()
            async with server:
                await server.serve_forever()

        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        with gateway(
            [upstream("slow", "anthropic", f"http://127.0.0.1:{port}")],
            {"claude": ["slow/claude-sonnet-4-5"]},
            asgi_server=asgi_server,
        ) as env:
            with env.anthropic().messages.stream(
                model="claude", max_tokens=500, messages=HELLO
            ) as stream:
                for text in stream.text_stream:
                    assert text == "x" * 400
                    break  # leaves the stream: the SDK closes the connection
            assert hung_up.wait(10), "the gateway did not cancel the upstream request"
            env.sink.wait_for(lambda attempts: len(attempts) == 1)
            (attempt,) = env.sink.attempts
            assert attempt.outcome == "cancelled" and attempt.usage_estimated
            assert (attempt.input_tokens, attempt.output_tokens) == (42, 100)
            assert attempt.cost_usd is not None and attempt.cost_usd > 0  # a priced model
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(5)
        loop.close()
        sock.close()


# --- bad input ---------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_401_in_the_clients_protocol(env: Env) -> None:
    with pytest.raises(anthropic.AuthenticationError) as a_err:
        env.anthropic(api_key="ovn-wrong").messages.create(
            model="claude", max_tokens=5, messages=HELLO
        )
    assert a_err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError) as o_err:
        env.openai(api_key="ovn-wrong").chat.completions.create(model="gpt", messages=HELLO)
    assert o_err.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        env.openai(api_key="ovn-wrong").responses.create(model="gpt", input="hi")
    status, body, _ = post(env.url + "/v1/messages", b"{}", {"content-type": "application/json"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body, _ = post(env.url + "/v1/chat/completions", b"{}", {})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert env.sink.attempts == []


def test_malformed_json_unknown_alias_and_oversized_body(env: Env) -> None:
    auth = {"x-api-key": env.key, "content-type": "application/json"}
    status, body, _ = post(env.url + "/v1/messages", b'{"model": "claude", ', auth)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"]
    status, body, _ = post(
        env.url + "/v1/chat/completions", b"[1, 2]", {"authorization": f"Bearer {env.key}"}
    )
    assert status == 400 and body["error"]["type"] == "invalid_request_error"

    with pytest.raises(anthropic.NotFoundError) as a_err:
        env.anthropic().messages.create(model="claude-nope", max_tokens=5, messages=HELLO)
    assert "claude-nope" in str(a_err.value) and "known: claude, gpt" in str(a_err.value)
    with pytest.raises(openai.NotFoundError) as o_err:
        env.openai().chat.completions.create(model="gpt-nope", messages=HELLO)
    assert o_err.value.code == "model_not_found"

    huge = "x" * (33 * 2**20)
    with pytest.raises(anthropic.APIStatusError) as big:
        env.anthropic().messages.create(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": huge}]
        )
    assert big.value.status_code == 413
    assert big.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert env.sink.attempts == []


def test_models_health_and_metrics(env: Env) -> None:
    a1, _, _ = env.extra["fakes"]
    assert [m.id for m in env.anthropic().models.list()] == ["claude", "gpt"]
    assert [m.id for m in env.openai().models.list()] == ["claude", "gpt"]
    assert get(env.url + "/v1/models")[0] == 401

    a1.fault("status", code=500)
    env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
    health = env.health()
    first = health["routes"][0]["candidates"][0]
    assert first["candidate"] == "a1/claude-fake-1" and first["state"] == "closed"
    assert first["error_rate"] == 1.0 and "HTTP 500" in first["last_error"]

    status, text = get(env.url + "/metrics")
    assert status == 200
    assert (
        'overnight_gateway_attempts_total{upstream="a1",credential="main",outcome="failed_over"} 1'
        in text
    )
    assert (
        'overnight_gateway_requests_total{route="claude",protocol="anthropic",status="200"} 1'
        in text
    )
    assert "# TYPE overnight_gateway_request_seconds histogram" in text
    assert 'overnight_gateway_breaker_open{upstream="a1",credential="main"} 0' in text


def test_credentials_take_turns_and_all_rate_limited_is_a_429(
    fakes: tuple[FakeProvider, ...],
) -> None:
    a = fakes[0]
    with gateway(
        [upstream("a", "anthropic", a.url, "k1", "k2")],
        {"claude": ["a/claude-fake-1"]},
    ) as env:
        client = env.anthropic()
        for _ in range(4):
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert [x.credential for x in env.sink.attempts] == ["k1", "k2", "k1", "k2"]
        assert [r["headers"]["x-api-key"] for r in a.requests] == ["sk-a-k1", "sk-a-k2"] * 2

        a.fault("status", code=429, retry_after=7, times=2)
        with pytest.raises(anthropic.RateLimitError) as err:
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert err.value.response.headers["retry-after"] == "7"
        assert "rate-limited" in err.value.message
        # Both credentials now sit out their Retry-After: answered at once, still a 429.
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert len(a.requests) == 6
        env.clock.advance(7)
        client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert env.kinds() == []  # rate limits are not outages: no breaker, no brownout


def test_beta_query_and_headers_reach_an_anthropic_upstream(env: Env) -> None:
    a1, _, _ = env.extra["fakes"]
    status, body, _ = post(
        env.url + "/v1/messages?beta=true",
        json.dumps({"model": "claude", "max_tokens": 5, "messages": HELLO}).encode(),
        {
            "x-api-key": env.key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "interleaved-thinking-2025-05-14",
            "content-type": "application/json",
        },
    )
    assert status == 200 and body["type"] == "message"
    sent = a1.requests[0]
    assert sent["query"] == {"beta": "true"}
    assert sent["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"


def test_a_rewritten_key_file_brings_a_rotated_out_credential_back(tmp_path: Path) -> None:
    key_file = tmp_path / "oauth-token"
    key_file.write_text("sk-old\n")
    with FakeProvider("anthropic", api_keys=["sk-new"]) as a:
        spec = upstream("a", "anthropic", a.url)
        spec["credentials"] = [{"name": "oauth", "file": str(key_file)}]
        with gateway(
            [spec], {"claude": ["a/claude-fake-1"]}, secrets={("a", "oauth"): "sk-old"}
        ) as env:
            client = env.anthropic()
            with pytest.raises(anthropic.APIStatusError) as err:
                client.messages.create(model="claude", max_tokens=5, messages=HELLO)
            assert err.value.status_code == 503
            assert env.kinds() == ["credential_rotated_out", "brownout"]
            key_file.write_text("sk-new\n")
            env.clock.advance(5)
            client.messages.create(model="claude", max_tokens=5, messages=HELLO)
            assert env.kinds() == ["credential_rotated_out", "brownout", "recovery"]
            assert a.requests[-1]["headers"]["x-api-key"] == "sk-new"


def test_a_bad_request_is_the_clients_and_is_not_retried(env: Env) -> None:
    a1, a2, _ = env.extra["fakes"]
    a1.fault("status", code=400, message="messages: field required")
    with pytest.raises(anthropic.BadRequestError) as err:
        env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert "messages: field required" in err.value.message
    assert a2.requests == [] and env.outcomes() == [("a1", "rejected")]
    assert env.health()["routes"][0]["candidates"][0]["state"] == "closed"
