"""Failover across vendors: a client keeps speaking its protocol while another vendor answers.

Official SDKs -> gateway -> fake providers of the other protocol, through
`translate/`; streaming and not, tools included, with usage metered from
the upstream's own report.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from overnight.testing.fake_provider import FakeProvider
from overnight.testing.replies import Reply, ToolCall, Usage
from tests.helpers.gateway import HELLO, Env, gateway, upstream

TOOLS = [
    {
        "name": "Bash",
        "description": "Run a shell command",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    }
]


@pytest.fixture
def env() -> Iterator[Env]:
    with (
        FakeProvider("anthropic") as a,
        FakeProvider("openai") as o,
        gateway(
            [
                upstream("claude-api", "anthropic", a.url, "main"),
                upstream("openai-api", "openai", o.url, "main"),
                upstream("local", "openai", o.url + "/v1", responses_api=False),
            ],
            {
                "claude": ["claude-api/claude-fake-1", "openai-api/gpt-fake-1"],
                "gpt": ["openai-api/gpt-fake-1", "claude-api/claude-fake-1"],
                "codex": ["local/gpt-fake-1"],
            },
        ) as e,
    ):
        e.extra["a"], e.extra["o"] = a, o
        yield e


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_client_fails_over_to_an_openai_upstream_with_tools(
    env: Env, stream: bool
) -> None:
    a, o = env.extra["a"], env.extra["o"]
    a.fault("status", code=529)
    o.enqueue(
        Reply(
            text="Let me look.",
            tool_calls=[ToolCall("Bash", {"command": "ls"})],
            usage=Usage(input_tokens=40, output_tokens=12, cache_read_tokens=8),
        )
    )
    client = env.anthropic()
    conversation = [
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig-only-claude-knows"},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "pwd"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "/work"}],
        },
    ]
    kwargs = {"model": "claude", "max_tokens": 100, "messages": conversation, "tools": TOOLS}
    if stream:
        with client.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)  # type: ignore[arg-type]
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.name == "Bash" and call.input == {"command": "ls"}

    sent = o.requests[-1]["body"]
    assert sent["model"] == "gpt-fake-1" and "sig-only-claude-knows" not in str(sent)
    assert any(m.get("role") == "tool" for m in sent["messages"])
    failed, served = env.sink.attempts
    assert (failed.outcome, served.outcome) == ("failed_over", "ok")
    assert (served.upstream, served.upstream_protocol, served.client_protocol) == (
        "openai-api",
        "chat",
        "anthropic",
    )
    assert (served.input_tokens, served.cache_read_tokens, served.output_tokens) == (40, 8, 12)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_chat_client_served_by_an_anthropic_upstream(env: Env, stream: bool) -> None:
    a, o = env.extra["a"], env.extra["o"]
    o.fault("status", code=500)
    a.enqueue(Reply(text="hi from claude", usage=Usage(input_tokens=9, output_tokens=4)))
    client = env.openai()
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gpt", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 9
    else:
        done = client.chat.completions.create(model="gpt", messages=HELLO)
        text = done.choices[0].message.content or ""
        assert done.choices[0].finish_reason == "stop"
    assert text == "hi from claude"
    assert a.requests[-1]["body"]["model"] == "claude-fake-1"
    assert env.outcomes() == [("openai-api", "failed_over"), ("claude-api", "ok")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_client_served_by_anthropic_and_by_a_chat_only_server(
    env: Env, stream: bool
) -> None:
    a, o = env.extra["a"], env.extra["o"]
    o.fault("status", code=503)
    a.enqueue(Reply(text="from claude", usage=Usage(input_tokens=3, output_tokens=2)))
    o.enqueue(Reply(tool_calls=[ToolCall("shell", {"cmd": ["ls"]})]))
    client = env.openai()
    results = []
    for model in ("gpt", "codex"):
        if stream:
            with client.responses.stream(model=model, input="hello") as s:
                results.append(s.get_final_response())
        else:
            results.append(client.responses.create(model=model, input="hello"))
    from_claude, from_local = results
    assert from_claude.output_text == "from claude"
    call = from_local.output[0]
    assert call.type == "function_call" and call.name == "shell"
    assert o.requests[-1]["path"] == "/v1/chat/completions"
    assert env.outcomes() == [
        ("openai-api", "failed_over"),
        ("claude-api", "ok"),
        ("local", "ok"),
    ]


def test_a_translated_stream_ends_with_the_clients_last_event(env: Env) -> None:
    """The Responses client has its whole answer at `response.completed`; the gateway
    does not hold it (or call the answer cancelled when the client hangs up) while the
    Chat upstream is slow to send its `[DONE]`."""
    o = env.extra["o"]
    o.fault("stall", after_chunks=-1, seconds=60)
    o.enqueue(Reply(text="all here", usage=Usage(input_tokens=9, output_tokens=3)))
    client = env.openai()
    with client.responses.stream(model="codex", input="hello") as s:
        final = s.get_final_response()
    assert final.output_text == "all here"
    env.sink.wait_for(lambda attempts: len(attempts) == 1)
    (attempt,) = env.sink.attempts
    assert (attempt.upstream, attempt.outcome, attempt.error) == ("local", "ok", None)
    assert (attempt.input_tokens, attempt.output_tokens, attempt.usage_estimated) == (9, 3, False)


def test_cross_protocol_stream_cut_midway_is_an_explicit_anthropic_error(env: Env) -> None:
    a, o = env.extra["a"], env.extra["o"]
    a.fault("status", code=529)
    o.fault("cut", after_chunks=3)
    o.enqueue(Reply(text="one two three four five six seven eight"))
    client = env.anthropic()
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model="claude", max_tokens=50, messages=HELLO) as s,
    ):
        for _ in s.text_stream:
            pass
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert env.outcomes() == [("claude-api", "failed_over"), ("openai-api", "stream_error")]
