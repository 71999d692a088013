"""The fake provider, seen through the official `anthropic` and `openai` SDKs over loopback.

Each test asserts what a real client sees: typed replies and usage, the exact
streaming event order, and for every fault the SDK's own exception.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2  # the transport under both SDKs; anthropic lets its errors out of a stream
import openai
import pytest

from overnight.errors import ConfigError
from overnight.gateway import protocols
from overnight.testing import FakeProvider, Reply, ToolCall, Usage, load_script
from tests.helpers.processes import started, stop

TEXT = "the quick brown fox jumps over the lazy dog"
BASH = ToolCall(name="Bash", arguments={"command": "ls -la", "timeout": 30})
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def claude() -> Iterator[tuple[FakeProvider, anthropic.Anthropic]]:
    with (
        FakeProvider(protocol="anthropic") as fp,
        anthropic.Anthropic(base_url=fp.url, api_key="k", max_retries=0, timeout=5) as client,
    ):
        yield fp, client


@pytest.fixture
def gpt() -> Iterator[tuple[FakeProvider, openai.OpenAI]]:
    with (
        FakeProvider(protocol="openai") as fp,
        openai.OpenAI(base_url=fp.url + "/v1", api_key="k", max_retries=0, timeout=5) as client,
    ):
        yield fp, client


# --- Anthropic Messages ----------------------------------------------------------------


def test_messages_text_with_the_usage_given(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    usage = Usage(input_tokens=10, output_tokens=2, cache_read_tokens=7, cache_write_tokens=3)
    fp.enqueue(Reply(text="hi", usage=usage))
    message = client.messages.create(model="claude-x", max_tokens=50, messages=USER)
    assert message.model == "claude-x"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "hi"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 10
    assert message.usage.output_tokens == 2
    assert message.usage.cache_read_input_tokens == 7
    assert message.usage.cache_creation_input_tokens == 3
    [request] = fp.requests
    assert (request["method"], request["path"]) == ("POST", "/v1/messages")
    assert request["headers"]["authorization"] == "Bearer k"  # anthropic 2.x sends keys as bearer
    assert request["body"]["messages"] == USER


def test_messages_stream_has_the_exact_event_sequence(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    fp.enqueue(Reply(text=TEXT, tool_calls=[BASH], usage=Usage(input_tokens=100, output_tokens=40)))
    events = list(client.messages.create(model="m", max_tokens=50, messages=USER, stream=True))
    kinds = [e.type for e in events]
    text_deltas = [e for e in events if e.type == "content_block_delta" and e.index == 0]
    json_deltas = [e for e in events if e.type == "content_block_delta" and e.index == 1]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(text_deltas),
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * len(json_deltas),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert len(text_deltas) > 3 and len(json_deltas) > 1
    assert "".join(e.delta.text for e in text_deltas) == TEXT
    arguments = "".join(e.delta.partial_json for e in json_deltas)
    assert json.loads(arguments) == BASH.arguments
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens == 100
    assert start.message.usage.output_tokens <= 1  # the real API's placeholder
    assert delta.usage.output_tokens == 40  # cumulative, at the end
    assert delta.delta.stop_reason == "tool_use"


def test_messages_stream_helper_assembles_text_and_tool_use(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    fp.enqueue(Reply(text=TEXT, tool_calls=[BASH]))
    with client.messages.stream(model="m", max_tokens=50, messages=USER) as stream:
        message = stream.get_final_message()
    text, tool = message.content
    assert text.type == "text" and text.text == TEXT
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.input == BASH.arguments
    assert tool.id.startswith("toolu_")
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_messages_takes_claude_code_shaped_requests(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, _ = claude
    # Claude Code: ?beta=true, an anthropic-beta header, a bearer token, system
    # entries inside `messages`, always streaming.
    with anthropic.Anthropic(base_url=fp.url, auth_token="oauth-token", max_retries=0) as client:
        events = client.beta.messages.create(
            model="claude-opus-5-5",
            max_tokens=50,
            messages=[
                {"role": "system", "content": "You are Claude Code."},
                {"role": "user", "content": "hi"},
            ],
            betas=["claude-code-20250219"],
            stream=True,
            extra_query={"beta": "true"},  # the TypeScript SDK adds it; the Python one does not
        )
        assert [e.type for e in events][-1] == "message_stop"
    [request] = fp.requests
    assert request["query"] == {"beta": "true"}
    assert request["headers"]["authorization"] == "Bearer oauth-token"
    assert "claude-code-20250219" in request["headers"]["anthropic-beta"]
    assert "anthropic-version" in request["headers"]


# --- OpenAI Chat Completions -----------------------------------------------------------


def test_chat_text_and_tool_call(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    fp.enqueue(Reply(text="hello"), Reply(tool_calls=[BASH]))
    first = client.chat.completions.create(model="gpt-x", messages=USER)
    assert first.choices[0].message.content == "hello"
    assert first.choices[0].finish_reason == "stop"
    second = client.chat.completions.create(model="gpt-x", messages=USER)
    [call] = second.choices[0].message.tool_calls or []
    assert second.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "Bash"
    assert json.loads(call.function.arguments) == BASH.arguments
    assert call.id.startswith("call_")


def test_chat_stream_with_tool_call_deltas_and_a_usage_chunk(
    gpt: tuple[FakeProvider, openai.OpenAI],
) -> None:
    fp, client = gpt
    usage = Usage(input_tokens=50, output_tokens=9, cache_read_tokens=30, reasoning_tokens=4)
    fp.enqueue(Reply(text=TEXT, tool_calls=[BASH], usage=usage))
    chunks = list(
        client.chat.completions.create(
            model="gpt-x",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == TEXT
    call_deltas = [t for d in deltas for t in d.tool_calls or []]
    assert call_deltas[0].id and call_deltas[0].function and call_deltas[0].function.name == "Bash"
    assert len(call_deltas) > 2
    arguments = "".join(t.function.arguments or "" for t in call_deltas if t.function)
    assert json.loads(arguments) == BASH.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.prompt_tokens == 80  # OpenAI counts cached input inside prompt_tokens
    assert final.usage.completion_tokens == 9
    assert (
        final.usage.prompt_tokens_details and final.usage.prompt_tokens_details.cached_tokens == 30
    )
    details = final.usage.completion_tokens_details
    assert details and details.reasoning_tokens == 4


def test_chat_stream_without_include_usage_has_no_usage(
    gpt: tuple[FakeProvider, openai.OpenAI],
) -> None:
    _, client = gpt
    chunks = list(client.chat.completions.create(model="g", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok"


# --- OpenAI Responses ------------------------------------------------------------------


def test_responses_non_streaming(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    fp.enqueue(Reply(text="hello", tool_calls=[BASH], usage=Usage(input_tokens=5, output_tokens=3)))
    response = client.responses.create(model="gpt-x", input="hi")
    assert response.status == "completed"
    assert response.output_text == "hello"
    message, call = response.output
    assert message.type == "message" and call.type == "function_call"
    assert call.name == "Bash" and json.loads(call.arguments) == BASH.arguments
    assert response.usage and response.usage.input_tokens == 5 and response.usage.output_tokens == 3


def test_responses_stream_as_codex_reads_it(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    usage = Usage(input_tokens=20, output_tokens=8, cache_read_tokens=10, reasoning_tokens=2)
    fp.enqueue(Reply(text=TEXT, tool_calls=[BASH], usage=usage))
    events = list(client.responses.create(model="gpt-x", input="hi", stream=True))
    kinds = [e.type for e in events]
    for needed in (
        "response.created",
        "response.output_item.added",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.done",
    ):
        assert needed in kinds
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.input_tokens == 30
    assert completed.response.usage.input_tokens_details.cached_tokens == 10
    assert completed.response.usage.output_tokens_details.reasoning_tokens == 2


def test_responses_stream_helper_assembles_the_final_response(
    gpt: tuple[FakeProvider, openai.OpenAI],
) -> None:
    fp, client = gpt
    fp.enqueue(Reply(text=TEXT, tool_calls=[BASH]))
    with client.responses.stream(model="gpt-x", input="hi") as stream:
        response = stream.get_final_response()
    assert response.output_text == TEXT
    call = response.output[1]
    assert call.type == "function_call" and json.loads(call.arguments) == BASH.arguments


# --- both providers --------------------------------------------------------------------


def test_models_lists(
    claude: tuple[FakeProvider, anthropic.Anthropic], gpt: tuple[FakeProvider, openai.OpenAI]
) -> None:
    assert [m.id for m in claude[1].models.list()] == ["claude-fake-1"]
    assert [m.id for m in gpt[1].models.list()] == ["gpt-fake-1"]


def test_the_fake_serves_every_protocol_the_gateway_speaks() -> None:
    for protocol in protocols.protocols():
        with FakeProvider(protocol=protocol.vendor) as fp:
            answer = httpx.post(fp.url + protocol.path, json={"model": "m"}, timeout=5)
        assert answer.status_code == 200, protocol


def test_an_empty_queue_answers_ok(claude: tuple[FakeProvider, anthropic.Anthropic]) -> None:
    _, client = claude
    message = client.messages.create(model="m", max_tokens=50, messages=USER)
    assert message.content[0].text == "ok"


def test_a_wrong_key_gets_the_providers_401() -> None:
    with FakeProvider(protocol="anthropic", api_keys={"good"}) as fp:
        with anthropic.Anthropic(base_url=fp.url, api_key="bad", max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError) as info:
                client.messages.create(model="m", max_tokens=5, messages=USER)
            assert info.value.body["error"]["type"] == "authentication_error"
        with anthropic.Anthropic(base_url=fp.url, api_key="good", max_retries=0) as client:
            client.messages.create(model="m", max_tokens=5, messages=USER)
        # Older clients and curl send the key as x-api-key.
        body = {"model": "m", "max_tokens": 5, "messages": USER}
        with httpx.Client(base_url=fp.url) as raw:
            assert (
                raw.post("/v1/messages", json=body, headers={"x-api-key": "good"}).status_code
                == 200
            )
            missing = raw.post("/v1/messages", json=body)
            assert missing.status_code == 401
            assert missing.json()["error"]["message"] == "x-api-key header is required"
    with FakeProvider(protocol="openai", api_keys={"good"}) as fp:
        with openai.OpenAI(base_url=fp.url + "/v1", api_key="bad-key-123456", max_retries=0) as oc:
            with pytest.raises(openai.AuthenticationError) as oinfo:
                oc.responses.create(model="m", input="hi")
            assert oinfo.value.code == "invalid_api_key"
        with openai.OpenAI(base_url=fp.url + "/v1", api_key="good", max_retries=0) as oc:
            oc.responses.create(model="m", input="hi")


# --- faults ----------------------------------------------------------------------------


def test_status_faults_hit_the_next_requests_then_stop(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    fp.enqueue(Reply(text="after the outage"))
    fp.fault("status", code=529, times=2)
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError) as info:
            client.messages.create(model="m", max_tokens=5, messages=USER)
        assert info.value.body["error"]["type"] == "overloaded_error"
    message = client.messages.create(model="m", max_tokens=5, messages=USER)
    assert message.content[0].text == "after the outage"


def test_rate_limit_carries_retry_after(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    fp.fault("status", code=429, retry_after=1.5)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=USER)
    assert info.value.response.headers["retry-after"] == "1.5"
    assert info.value.response.headers["retry-after-ms"] == "1500"
    assert info.value.code == "rate_limit_exceeded"


def test_faults_fire_in_fifo_order(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    fp.fault("status", code=503)
    fp.fault("status", code=500)
    errors = []
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            client.responses.create(model="m", input="hi")
        errors.append(info.value.status_code)
    assert errors == [503, 500]
    assert client.responses.create(model="m", input="hi").output_text == "ok"


def test_an_expired_key_stays_expired_until_cleared(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    fp.fault("expired_key")
    for _ in range(3):
        with pytest.raises(anthropic.AuthenticationError) as info:
            client.messages.create(model="m", max_tokens=5, messages=USER)
        assert "expired" in info.value.message
    fp.clear_faults()
    client.messages.create(model="m", max_tokens=5, messages=USER)


def test_delay_holds_the_headers(gpt: tuple[FakeProvider, openai.OpenAI]) -> None:
    fp, client = gpt
    fp.fault("delay", seconds=0.3)
    started = time.perf_counter()
    client.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - started >= 0.3
    with openai.OpenAI(
        base_url=fp.url + "/v1", api_key="k", max_retries=0, timeout=0.1
    ) as impatient:
        fp.fault("delay", seconds=2)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="m", messages=USER)


def test_reset_is_a_connection_error(
    claude: tuple[FakeProvider, anthropic.Anthropic], gpt: tuple[FakeProvider, openai.OpenAI]
) -> None:
    claude[0].fault("reset")
    with pytest.raises(anthropic.APIConnectionError):
        claude[1].messages.create(model="m", max_tokens=5, messages=USER, stream=True)
    gpt[0].fault("reset")
    with pytest.raises(openai.APIConnectionError):
        gpt[1].responses.create(model="m", input="hi")


# One streaming call per API, returning the events a client got before any error.
Streamer = Callable[[FakeProvider, float], Iterator[Any]]


def _messages_stream(fp: FakeProvider, timeout: float) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=fp.url, api_key="k", max_retries=0, timeout=timeout) as c:
        yield from c.messages.create(model="m", max_tokens=50, messages=USER, stream=True)


def _chat_stream(fp: FakeProvider, timeout: float) -> Iterator[Any]:
    with openai.OpenAI(base_url=fp.url + "/v1", api_key="k", max_retries=0, timeout=timeout) as c:
        yield from c.chat.completions.create(model="m", messages=USER, stream=True)


def _responses_stream(fp: FakeProvider, timeout: float) -> Iterator[Any]:
    with openai.OpenAI(base_url=fp.url + "/v1", api_key="k", max_retries=0, timeout=timeout) as c:
        yield from c.responses.create(model="m", input="hi", stream=True)


STREAMS = [
    pytest.param("anthropic", _messages_stream, id="messages"),
    pytest.param("openai", _chat_stream, id="chat"),
    pytest.param("openai", _responses_stream, id="responses"),
]
# What each SDK raises when the connection dies or stalls mid-stream: openai wraps
# transport errors, anthropic lets httpx2's through.
CONNECTION_ERRORS = (anthropic.APIConnectionError, openai.APIConnectionError, httpx2.TransportError)
TIMEOUTS = (anthropic.APITimeoutError, openai.APITimeoutError, httpx2.TimeoutException)


def _consume(stream: Iterator[Any], received: list[Any]) -> None:
    for event in stream:
        received.append(event)


@pytest.mark.parametrize(("protocol", "stream"), STREAMS)
def test_cut_mid_stream_is_a_connection_error_after_the_first_events(
    protocol: str, stream: Streamer
) -> None:
    with FakeProvider(protocol=protocol) as fp:
        fp.enqueue(Reply(text=TEXT))
        fp.fault("cut", after_chunks=3)
        received: list[Any] = []
        with pytest.raises(CONNECTION_ERRORS):
            _consume(stream(fp, 5), received)
        assert len(received) == 3
        # The answer never arrived whole, so it is still queued for a retry.
        retried: list[Any] = []
        _consume(stream(fp, 5), retried)
        assert len(retried) > 3


@pytest.mark.parametrize(("protocol", "stream"), STREAMS)
def test_stall_mid_stream_is_a_read_timeout(protocol: str, stream: Streamer) -> None:
    with FakeProvider(protocol=protocol) as fp:
        fp.enqueue(Reply(text=TEXT))
        fp.fault("stall", after_chunks=3, seconds=30)
        received: list[Any] = []
        started = time.perf_counter()
        with pytest.raises(TIMEOUTS):
            _consume(stream(fp, 0.3), received)
        assert len(received) == 3
        assert time.perf_counter() - started < 5  # and stop() does not wait for the stall


@pytest.mark.parametrize(("protocol", "stream"), STREAMS)
def test_malformed_chunk_is_an_error_not_a_silent_success(protocol: str, stream: Streamer) -> None:
    with FakeProvider(protocol=protocol) as fp:
        fp.enqueue(Reply(text=TEXT))
        fp.fault("malformed", after_chunks=2)
        received: list[Any] = []
        with pytest.raises(json.JSONDecodeError):
            _consume(stream(fp, 5), received)
        assert len(received) == 2


def test_stream_error_is_the_providers_in_stream_error(
    claude: tuple[FakeProvider, anthropic.Anthropic], gpt: tuple[FakeProvider, openai.OpenAI]
) -> None:
    claude[0].fault("stream_error", after_chunks=2)
    with pytest.raises(anthropic.APIStatusError) as info:
        list(claude[1].messages.create(model="m", max_tokens=5, messages=USER, stream=True))
    assert info.value.body["error"]["type"] == "overloaded_error"
    gpt[0].fault("stream_error", after_chunks=2)
    with pytest.raises(openai.APIError):
        list(gpt[1].chat.completions.create(model="m", messages=USER, stream=True))
    gpt[0].fault("stream_error", after_chunks=2)
    events = list(gpt[1].responses.create(model="m", input="hi", stream=True))
    assert events[-1].type == "response.failed"


def test_mid_answer_faults_on_non_streaming_requests(
    claude: tuple[FakeProvider, anthropic.Anthropic],
) -> None:
    fp, client = claude
    fp.fault("cut")
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="m", max_tokens=5, messages=USER)
    fp.fault("malformed")
    with pytest.raises(json.JSONDecodeError):
        client.messages.create(model="m", max_tokens=5, messages=USER)
    fp.fault("stall", seconds=30)
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.3).messages.create(model="m", max_tokens=5, messages=USER)


def test_bad_faults_are_refused_with_the_reason() -> None:
    fp = FakeProvider()
    with pytest.raises(ValueError, match="needs code="):
        fp.fault("status")
    with pytest.raises(ValueError, match="400-599"):
        fp.fault("status", code=200)
    with pytest.raises(ValueError, match="unknown fault kind"):
        fp.fault("explode")
    with pytest.raises(ValueError, match="takes no"):
        fp.fault("reset", seconds=1)


# --- conversation mode -----------------------------------------------------------------

SCRIPT = [
    Reply(tool_calls=[BASH]),
    Reply(tool_calls=[ToolCall(name="Edit", arguments={"path": "a.py"})]),
    Reply(text="done"),
]


def test_conversation_mode_counts_anthropic_tool_results() -> None:
    with (
        FakeProvider(protocol="anthropic", script=SCRIPT, mode="conversation") as fp,
        anthropic.Anthropic(base_url=fp.url, api_key="k", max_retries=0) as client,
    ):

        def ask(messages: list[dict[str, Any]]) -> anthropic.types.Message:
            return client.messages.create(model="m", max_tokens=50, messages=messages)

        first = ask(USER)
        assert first.content[0].type == "tool_use" and first.content[0].name == "Bash"
        assert ask(USER).content[0].name == "Bash"  # a retry gets the same turn
        result1 = {"type": "tool_result", "tool_use_id": "t1", "content": "a.py"}
        history = [
            *USER,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
            },
            {"role": "user", "content": [result1]},
        ]
        assert ask(history).content[0].name == "Edit"
        # Claude Code merges consecutive assistant turns: one message, two tool_use blocks.
        merged = [
            *USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}},
                    {"type": "tool_use", "id": "t2", "name": "Edit", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [result1, {"type": "tool_result", "tool_use_id": "t2", "content": "ok"}],
            },
        ]
        assert ask(merged).content[0].text == "done"


def test_conversation_mode_counts_openai_tool_results() -> None:
    parallel = [Reply(tool_calls=[BASH, BASH]), Reply(text="done")]
    with (
        FakeProvider(protocol="openai", script=parallel, mode="conversation") as fp,
        openai.OpenAI(base_url=fp.url + "/v1", api_key="k", max_retries=0) as client,
    ):
        call = {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}
        one = [
            *USER,
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "x"},
        ]
        # Two parallel calls need two results before the script moves on.
        assert client.chat.completions.create(model="m", messages=one).choices[0].message.tool_calls
        two = [*one, {"role": "tool", "tool_call_id": "c2", "content": "y"}]
        assert (
            client.chat.completions.create(model="m", messages=two).choices[0].message.content
            == "done"
        )
        outputs: list[Any] = [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "Bash", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "x"},
            {"type": "function_call_output", "call_id": "c2", "output": "y"},
        ]
        assert client.responses.create(model="m", input=outputs).output_text == "done"
        assert (
            client.responses.create(model="m", input=outputs[:3]).output[0].type == "function_call"
        )


# --- out of process --------------------------------------------------------------------


def test_admin_endpoints_drive_the_fake_over_http() -> None:
    with FakeProvider(protocol="anthropic") as fp, httpx.Client(base_url=fp.url) as admin:
        reply = {"text": "scripted", "usage": {"input_tokens": 3, "output_tokens": 1}}
        assert admin.post("/_admin/enqueue", json=reply).json()["enqueued"] == 1
        assert (
            admin.post(
                "/_admin/fault", json={"kind": "status", "code": 529, "times": None}
            ).status_code
            == 200
        )
        bad = admin.post("/_admin/fault", json={"kind": "status"})
        assert bad.status_code == 400 and "needs code=" in bad.json()["error"]
        assert admin.post("/_admin/enqueue", json={"txt": "typo"}).status_code == 400
        with anthropic.Anthropic(base_url=fp.url, api_key="k", max_retries=0) as client:
            for _ in range(2):  # times: null means until cleared
                with pytest.raises(anthropic.OverloadedError):
                    client.messages.create(model="m", max_tokens=5, messages=USER)
            assert admin.post("/_admin/clear").json() == {"ok": True}
            message = client.messages.create(model="m", max_tokens=5, messages=USER)
            assert message.content[0].text == "scripted"
            assert message.usage.input_tokens == 3
        recorded = admin.get("/_admin/requests").json()
        assert [r["path"] for r in recorded] == ["/v1/messages"] * 3
        assert recorded[0]["body"]["messages"] == USER


def test_serve_runs_a_scripted_fake_until_interrupted(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [{"tool_calls": [{"name": "Bash", "arguments": {"command": "ls"}}]}, {"text": "done"}]
        )
    )
    code = "from overnight.testing.fake_provider import serve; import sys; serve('openai', 0, __import__('pathlib').Path(sys.argv[1]), 'conversation')"
    with started(
        [sys.executable, "-c", code, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert (
            "fake openai provider, conversation mode, 2 scripted replies" in proc.stdout.readline()
        )
        with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
            response = client.responses.create(model="m", input="hi")
            assert response.output[0].type == "function_call"
        out, err = stop(proc, wait=10)  # Ctrl-C
    assert proc.returncode == 0, err + out


def test_a_bad_script_names_the_file_and_the_field(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "ok"}, {"tool_calls": [{"arguments": {}}]}]))
    with pytest.raises(ConfigError) as info:
        load_script(script)
    assert str(script) in str(info.value) and "[1].tool_calls[0].name" in str(info.value)
    script.write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_script(script)
