"""Translation between Anthropic Messages, OpenAI Chat Completions and OpenAI Responses.

Round trips are checked on generated conversations: what a conversation *means*
(system text, turn order, text, tools, tool calls and their arguments, tool
results and their ids) must survive Anthropic -> OpenAI -> Anthropic and
OpenAI -> Anthropic -> OpenAI. Streams are checked against the non-streaming
translation: a client reassembling the translated stream, however the upstream
split its deltas, must end with the same message.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.gateway.translate import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamToOpenAI,
    AnthropicStreamToResponses,
    ChatStreamToResponses,
    ClientTool,
    OpenAIStreamToAnthropic,
    UpstreamStreamError,
    Usage,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    anthropic_to_responses_response,
    chat_to_responses_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    responses_to_chat_request,
    responses_tools,
    strip_vendor_state,
    usage_from_anthropic,
    usage_from_openai,
    usage_from_responses,
)

Json = dict[str, Any]
JOIN = "\n\n"  # how several text blocks read once collapsed into one string

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

texts = st.text(min_size=1, max_size=24)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,11}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9]{4,10}", fullmatch=True)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
schemas = st.fixed_dictionaries(
    {
        "type": st.just("object"),
        "properties": st.dictionaries(names, st.just({"type": "string"}), max_size=2),
    }
)
stop_sequences = texts.filter(lambda s: s.strip())


def text_block(text: str) -> Json:
    return {"type": "text", "text": text}


@st.composite
def anthropic_requests(draw: st.DrawFn) -> Json:
    tool_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    tools = [
        {"name": n, "description": draw(st.text(max_size=20)), "input_schema": draw(schemas)}
        for n in tool_names
    ]
    body: Json = {"model": "claude-x", "max_tokens": draw(st.integers(1, 64000)), "tools": tools}
    system = draw(
        st.none()
        | texts
        | st.lists(
            texts.map(lambda t: {**text_block(t), "cache_control": {"type": "ephemeral"}}),
            min_size=1,
            max_size=2,
        )
    )
    if system is not None:
        body["system"] = system
    messages: list[Json] = [
        {
            "role": "user",
            "content": draw(texts | st.lists(texts.map(text_block), min_size=1, max_size=2)),
        }
    ]
    for turn in range(draw(st.integers(0, 3))):
        blocks = []
        for i, kind in enumerate(
            draw(st.lists(st.sampled_from(["text", "tool_use"]), min_size=1, max_size=5))
        ):
            if kind == "text":
                blocks.append(text_block(draw(texts)))
            else:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_{turn}_{i}_{draw(ids)}",
                        "name": draw(st.sampled_from(tool_names)),
                        "input": draw(tool_inputs),
                    }
                )
        messages.append({"role": "assistant", "content": blocks})
        if draw(st.booleans()):  # Claude Code puts system entries inside `messages`
            messages.append({"role": "system", "content": draw(texts)})
        results: list[Json] = []
        for block in blocks:
            if block["type"] != "tool_use":
                continue
            content = draw(texts | st.lists(texts.map(text_block), max_size=2))
            result = {"type": "tool_result", "tool_use_id": block["id"], "content": content}
            if draw(st.booleans()):
                result["is_error"] = True
            results.append(result)
        tail = draw(st.lists(texts.map(text_block), min_size=0 if results else 1, max_size=2))
        messages.append({"role": "user", "content": results + tail})
    body["messages"] = messages
    choice = draw(
        st.none()
        | st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}])
        | st.sampled_from(tool_names).map(lambda n: {"type": "tool", "name": n})
    )
    if choice is not None:
        if choice["type"] != "none" and draw(st.booleans()):
            choice["disable_parallel_tool_use"] = True
        body["tool_choice"] = choice
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["top_p"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(stop_sequences, min_size=1, max_size=3))
    if draw(st.booleans()):
        body["stream"] = True
    return body


def anthropic_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    return [b["text"] for b in content if b.get("type") == "text" and b["text"]]


def anthropic_meaning(body: Json) -> Json:
    """What an Anthropic request says, without how it happens to be spelled."""
    system = anthropic_texts(body.get("system") or [])
    turns: list[Json] = []
    for message in body["messages"]:
        if message["role"] == "system":
            system += anthropic_texts(message["content"])
            continue
        content = message["content"]
        blocks = [text_block(content)] if isinstance(content, str) else list(content)
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1]["blocks"] += blocks
        else:
            turns.append({"role": message["role"], "blocks": blocks})
    choice = dict(body.get("tool_choice") or {"type": "auto"})
    return {
        "system": JOIN.join(system),
        "turns": [
            (
                t["role"],
                JOIN.join(anthropic_texts(t["blocks"])),
                [(b["id"], b["name"], b["input"]) for b in t["blocks"] if b["type"] == "tool_use"],
                [
                    (
                        b["tool_use_id"],
                        JOIN.join(anthropic_texts(b["content"])),
                        bool(b.get("is_error")),
                    )
                    for b in t["blocks"]
                    if b["type"] == "tool_result"
                ],
            )
            for t in turns
        ],
        "tools": [
            (t["name"], t.get("description") or "", t["input_schema"]) for t in body["tools"]
        ],
        "tool_choice": choice,
        **{k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "stop_sequences")},
        "stream": bool(body.get("stream")),
    }


@st.composite
def openai_requests(draw: st.DrawFn) -> Json:
    tool_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    tools = [
        {
            "type": "function",
            "function": {"name": n, "description": draw(texts), "parameters": draw(schemas)},
        }
        for n in tool_names
    ]
    messages: list[Json] = [{"role": "system", "content": draw(texts)}]
    if draw(st.booleans()):
        messages.append({"role": "developer", "content": draw(texts)})
    parts = st.lists(texts.map(text_block), min_size=1, max_size=2)
    messages.append({"role": "user", "content": draw(texts | parts)})
    for turn in range(draw(st.integers(0, 3))):
        calls = [
            {
                "id": f"call_{turn}_{i}_{draw(ids)}",
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(tool_names)),
                    "arguments": json.dumps(draw(tool_inputs)),
                },
            }
            for i in range(draw(st.integers(0, 3)))
        ]
        assistant: Json = {
            "role": "assistant",
            "content": draw(texts) if not calls else draw(st.none() | texts),
        }
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in calls:
            messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": draw(st.text(max_size=20))}
            )
        if not calls or draw(st.booleans()):
            messages.append({"role": "user", "content": draw(texts | parts)})
    body: Json = {"model": "gpt-x", "messages": messages, "tools": tools}
    limit = draw(st.sampled_from([None, "max_tokens", "max_completion_tokens"]))
    if limit:
        body[limit] = draw(st.integers(1, 100000))
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 2))
    if draw(st.booleans()):
        body["stop"] = draw(stop_sequences | st.lists(stop_sequences, min_size=1, max_size=3))
    choice = draw(
        st.sampled_from([None, "auto", "required", "none"])
        | st.sampled_from(tool_names).map(lambda n: {"type": "function", "function": {"name": n}})
    )
    if choice is not None:
        body["tool_choice"] = choice
    if draw(st.booleans()):
        body["parallel_tool_calls"] = draw(st.booleans())
    if draw(st.booleans()):
        body["stream"] = True
    return body


def openai_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    return [p["text"] for p in content or [] if p.get("type") == "text" and p["text"]]


def openai_meaning(body: Json) -> Json:
    """What a Chat Completions request says, without how it happens to be spelled."""
    system: list[str] = []
    turns: list[Any] = []
    for m in body["messages"]:
        if m["role"] in ("system", "developer"):
            system += openai_texts(m["content"])
        elif m["role"] == "tool":
            turns.append(("tool", m["tool_call_id"], m["content"]))
        elif m["role"] == "user" and turns and turns[-1][0] == "user":
            turns[-1] = ("user", JOIN.join([turns[-1][1], *openai_texts(m["content"])]))
        elif m["role"] == "user":
            turns.append(("user", JOIN.join(openai_texts(m["content"]))))
        else:
            calls = [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in m.get("tool_calls") or []
            ]
            turns.append(("assistant", JOIN.join(openai_texts(m["content"])), calls))
    choice = body.get("tool_choice", "auto")
    stop = body.get("stop")
    return {
        "system": JOIN.join(system),
        "turns": turns,
        "tools": [
            (t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
            for t in body["tools"]
        ],
        "tool_choice": choice,
        "parallel": choice == "none" or body.get("parallel_tool_calls") is not False,
        "max": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
        # Anthropic's temperature range is 0..1.
        "temperature": None if body.get("temperature") is None else min(body["temperature"], 1.0),
        "stop": [stop] if isinstance(stop, str) else stop,
        "stream": bool(body.get("stream")),
    }


def split(data: st.DataObject, text: str) -> list[str]:
    """`text` cut where hypothesis chooses, as an upstream might stream it."""
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=6)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


# --------------------------------------------------------------------------- round trips


@SETTINGS
@given(anthropic_requests())
def test_anthropic_request_survives_a_trip_through_openai(body: Json) -> None:
    original = copy.deepcopy(body)
    openai = anthropic_to_openai_request(body, "gpt-x")
    back = openai_to_anthropic_request(openai, "claude-x")
    assert body == original, "translation must not mutate its input"
    assert openai["model"] == "gpt-x"
    assert [m["role"] for m in openai["messages"]].count("system") <= 1
    assert anthropic_meaning(back) == anthropic_meaning(body)
    if body.get("stream"):
        assert openai["stream_options"] == {"include_usage": True}


@SETTINGS
@given(openai_requests())
def test_openai_request_survives_a_trip_through_anthropic(body: Json) -> None:
    anthropic = openai_to_anthropic_request(body, "claude-x")
    back = anthropic_to_openai_request(anthropic, "gpt-x")
    assert all(m["role"] in ("user", "assistant") for m in anthropic["messages"])
    assert anthropic["messages"][0]["role"] == "user"
    roles = [m["role"] for m in anthropic["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "turns must alternate"
    assert openai_meaning(back) == openai_meaning(body)


# --------------------------------------------------------------------------- requests


def test_claude_code_conversation_becomes_valid_chat_messages() -> None:
    body = {
        "model": "claude-sonnet",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]},
            {"role": "system", "content": "<system-reminder>be brief</system-reminder>"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
                    {"type": "text", "text": "Reading files."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"path": "a.py"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "Read",
                        "input": {"path": "b.py"},
                    },
                    {"type": "tool_use", "id": "toolu_3", "name": "Bash", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "x = 2"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_3",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "text", "text": "and hurry"},
                ],
            },
        ],
        "tools": [
            {"name": "Read", "description": "read a file", "input_schema": {"type": "object"}},
            {"name": "Bash", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "u"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }
    out = anthropic_to_openai_request(body, "qwen3")
    assert out["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code.\n\n<system-reminder>be brief</system-reminder>",
        },
        {"role": "user", "content": "fix the bug"},
        {
            "role": "assistant",
            "content": "Reading files.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"path": "a.py"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"path": "b.py"}'},
                },
                {
                    "id": "toolu_3",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "print(1)"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "x = 2"},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "[tool error] boom"},
        {"role": "user", "content": "and hurry"},
    ]
    assert [t["function"]["name"] for t in out["tools"]] == ["Read", "Bash"]
    assert out["tools"][0]["function"] == {
        "name": "Read",
        "parameters": {"type": "object"},
        "description": "read a file",
    }
    assert out["tool_choice"] == "auto"
    assert out["max_completion_tokens"] == 32000
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert not {"metadata", "thinking", "system", "max_tokens"} & set(out)


@pytest.mark.parametrize(
    ("anthropic", "openai"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice_maps_both_ways(anthropic: Json, openai: Any) -> None:
    tools = [{"name": "Read", "input_schema": {"type": "object"}}]
    to_openai = anthropic_to_openai_request(
        {"messages": [], "tools": tools, "tool_choice": anthropic, "max_tokens": 5}, "m"
    )
    assert to_openai["tool_choice"] == openai
    chat_tools = [{"type": "function", "function": {"name": "Read"}}]
    to_anthropic = openai_to_anthropic_request(
        {"messages": [], "tools": chat_tools, "tool_choice": openai}, "m"
    )
    assert to_anthropic["tool_choice"] == anthropic
    assert to_anthropic["tools"] == [
        {"name": "Read", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_openai_request_limits_and_sampling() -> None:
    base: Json = {"messages": [{"role": "user", "content": "hi"}]}
    assert openai_to_anthropic_request(base, "m")["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    assert openai_to_anthropic_request({**base, "max_tokens": 7}, "m")["max_tokens"] == 7
    both = {**base, "max_tokens": 7, "max_completion_tokens": 9}
    assert openai_to_anthropic_request(both, "m")["max_tokens"] == 9
    out = openai_to_anthropic_request(
        {**base, "temperature": 1.7, "top_p": 0.5, "stop": "END", "n": 1, "seed": 3}, "m"
    )
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (1.0, 0.5, ["END"])
    assert not {"n", "seed", "stop"} & set(out)
    assert "stop_sequences" not in openai_to_anthropic_request({**base, "stop": [" ", "\n"]}, "m")


def test_images_cross_in_both_directions() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "iVBOR"}
    body = {
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": png},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                ],
            }
        ],
    }
    openai = anthropic_to_openai_request(body, "m")
    assert openai["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
    ]
    back = openai_to_anthropic_request(openai, "m")
    assert back["messages"] == body["messages"]


def test_images_in_tool_results_move_to_the_user_turn() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "screenshot:"}, {"type": "image", "source": png}],
    }
    out = anthropic_to_openai_request({"messages": [{"role": "user", "content": [result]}]}, "m")
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "screenshot:"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        },
    ]


def test_openai_tool_ids_are_made_acceptable_to_anthropic() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call:1.a",
                        "type": "function",
                        "function": {"name": "f", "arguments": "not json"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call:1.a", "content": "ok"},
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    use = out["messages"][1]["content"][0]
    result = out["messages"][2]["content"][0]
    assert use["id"] == result["tool_use_id"] == "call_1_a"
    assert use["input"] == {"_raw_arguments": "not json"}


def test_codex_responses_request_becomes_chat() -> None:
    body = {
        "model": "gpt-5-codex",
        "instructions": "You are Codex.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "sandbox: on"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "list files"}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Sure."}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_a",
                "name": "shell",
                "arguments": '{"command":["ls"]}',
            },
            {
                "type": "function_call",
                "id": "fc_2",
                "call_id": "call_b",
                "name": "shell",
                "arguments": '{"command":["pwd"]}',
            },
            {"type": "function_call_output", "call_id": "call_a", "output": "a.py"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "/w"}],
            },
            {
                "type": "local_shell_call",
                "call_id": "ls_1",
                "action": {"type": "exec", "command": ["ls"]},
            },
            {
                "type": "custom_tool_call",
                "call_id": "ct_1",
                "name": "apply_patch",
                "input": "*** Begin",
            },
            {"type": "custom_tool_call_output", "call_id": "ct_1", "output": "done"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "run",
                "parameters": {"type": "object"},
                "strict": False,
            },
            {"type": "web_search"},
            {"type": "local_shell"},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "high", "summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "abc",
        "max_output_tokens": 2000,
        "stream": True,
    }
    out = responses_to_chat_request(body, "local-model")
    assert out["messages"] == [
        {"role": "system", "content": "You are Codex.\n\nsandbox: on"},
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command":["pwd"]}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "a.py"},
        {"role": "tool", "tool_call_id": "call_b", "content": "/w"},
        # A freeform tool's call and output cross as a function of one string.
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "ct_1",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "ct_1", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]
    assert [t["function"]["name"] for t in out["tools"]] == ["shell", "apply_patch"]
    assert out["tools"][0] == {
        "type": "function",
        "function": {"name": "shell", "description": "run", "parameters": {"type": "object"}},
    }
    assert out["tools"][1]["function"]["parameters"]["required"] == ["input"]
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False
    assert out["max_completion_tokens"] == 2000
    assert out["stream_options"] == {"include_usage": True}
    assert out["model"] == "local-model"
    assert not {"reasoning", "store", "include", "prompt_cache_key", "input", "instructions"} & set(
        out
    )
    # And on to an Anthropic upstream, the second hop of a Codex failover.
    anthropic = openai_to_anthropic_request(out, "claude")
    assert [m["role"] for m in anthropic["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert anthropic["system"] == [{"type": "text", "text": "You are Codex.\n\nsandbox: on"}]


def test_responses_string_input_and_text_format() -> None:
    out = responses_to_chat_request(
        {
            "input": "hello",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "r",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            "tool_choice": {"type": "function", "name": "f"},
            "tools": [{"type": "function", "name": "f"}],
        },
        "m",
    )
    assert out["messages"] == [{"role": "user", "content": "hello"}]
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True},
    }
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


# --------------------------------------------------------------------------- vendor state


def test_strip_vendor_state_drops_signed_thinking_and_cache_markers() -> None:
    body = {
        "model": "claude",
        "max_tokens": 100,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {
                "name": "Read",
                "input_schema": {"type": "object", "properties": {"cache_control": {}}},
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "reminder"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "let me see", "signature": "EqoBCkgIARAB=="},
                    {"type": "redacted_thinking", "data": "opaque=="},
                    {"type": "text", "text": "reading"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
                        ],
                    }
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "t", "signature": "s"}],
            },
        ],
    }
    original = copy.deepcopy(body)
    out = strip_vendor_state(body, "anthropic")
    assert body == original
    assert "thinking" not in out
    dumped = json.dumps(out["messages"])
    assert (
        "signature" not in dumped
        and "redacted_thinking" not in dumped
        and "cache_control" not in dumped
    )
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "reading"},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
    ]
    assert len(out["messages"]) == 3, "a turn of nothing but thinking goes entirely"
    assert out["system"] == [{"type": "text", "text": "sys"}, {"type": "text", "text": "reminder"}]
    # A tool's schema may legitimately name a property "cache_control".
    assert out["tools"] == [
        {"name": "Read", "input_schema": {"type": "object", "properties": {"cache_control": {}}}}
    ]


def test_strip_vendor_state_for_openai_and_responses() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo", "reasoning_content": "deep thoughts"},
        ],
        "store": True,
        "reasoning_effort": "high",
        "prompt_cache_key": "k",
        "temperature": 0.2,
    }
    out = strip_vendor_state(chat, "openai")
    assert out == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "temperature": 0.2,
    }
    responses = {
        "input": [
            {"type": "reasoning", "encrypted_content": "gAAA", "summary": []},
            {"type": "message", "role": "user", "content": "hi"},
        ],
        "previous_response_id": "resp_1",
        "include": ["reasoning.encrypted_content"],
        "store": True,
    }
    assert strip_vendor_state(responses, "responses") == {
        "input": [{"type": "message", "role": "user", "content": "hi"}]
    }
    with pytest.raises(ValueError, match="unknown protocol"):
        strip_vendor_state({}, "gemini")


# --------------------------------------------------------------------------- usage


def test_anthropic_cache_tokens_are_counted_once_each() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
            "output_tokens": 7,
        }
    )
    assert usage.input_tokens == 50
    assert usage.cache_read_tokens == 1000
    assert usage.cache_write_tokens == 200
    assert usage.total_input == 1250
    assert usage.output_tokens == 7
    # An OpenAI client is shown the whole prompt, the cached part inside it.
    resp = {
        "id": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
            "output_tokens": 7,
        },
    }
    shown = anthropic_to_openai_response(resp, "alias")["usage"]
    assert (
        shown["prompt_tokens"] == 1250 and shown["prompt_tokens_details"]["cached_tokens"] == 1000
    )
    assert shown["total_tokens"] == 1257


def test_openai_and_responses_usage_take_the_cached_part_out() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 120},
        }
    )
    assert usage == Usage(
        input_tokens=200, output_tokens=300, cache_read_tokens=800, reasoning_tokens=120
    )
    assert usage.total_input == 1000
    assert usage_from_openai({"prompt_tokens": 10, "completion_tokens": 2}) == Usage(10, 2)
    # Newer OpenAI responses also count cache writes inside the prompt.
    written = {
        "prompt_tokens": 1250,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200},
    }
    assert usage_from_openai(written) == Usage(
        input_tokens=50, cache_read_tokens=1000, cache_write_tokens=200
    )
    assert (
        usage_from_openai({"prompt_tokens": 10, "prompt_cache_hit_tokens": 4}).cache_read_tokens
        == 4
    )
    usage = usage_from_responses(
        {
            "input_tokens": 900,
            "input_tokens_details": {"cached_tokens": 600},
            "output_tokens": 40,
            "output_tokens_details": {"reasoning_tokens": 30},
            "total_tokens": 940,
        }
    )
    assert usage == Usage(
        input_tokens=300, output_tokens=40, cache_read_tokens=600, reasoning_tokens=30
    )


# --------------------------------------------------------------------------- non-streaming responses


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
    ],
)
def test_stop_reasons_map_both_ways(stop_reason: str, finish_reason: str) -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message: Json = {"role": "assistant", "content": "x"}
    if finish_reason == "tool_calls":
        message["tool_calls"] = calls
    chat = {
        "id": "1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    expected = "end_turn" if stop_reason == "stop_sequence" else stop_reason
    assert openai_to_anthropic_response(chat, "m")["stop_reason"] == expected
    anthropic = {
        "id": "1",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": stop_reason,
        "usage": {},
    }
    assert (
        anthropic_to_openai_response(anthropic, "m")["choices"][0]["finish_reason"] == finish_reason
    )


def test_tool_calls_that_say_stop_are_still_tool_use() -> None:
    chat = {
        "id": "1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "ls", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                "finish_reason": "stop",  # what Ollama says
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }
    out = openai_to_anthropic_response(chat, "alias")
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [{"type": "tool_use", "id": "call_1", "name": "ls", "input": {"a": 1}}]
    assert out["model"] == "alias" and out["type"] == "message" and out["role"] == "assistant"
    assert out["usage"] == {
        "input_tokens": 5,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_responses_objects_from_chat_and_anthropic() -> None:
    chat = {
        "id": "c1",
        "created": 7,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Running.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
    }
    out = chat_to_responses_response(chat, "alias")
    assert out["object"] == "response" and out["status"] == "completed" and out["model"] == "alias"
    message, call = out["output"]
    assert message["type"] == "message" and message["content"][0] == {
        "type": "output_text",
        "text": "Running.",
        "annotations": [],
    }
    assert {k: call[k] for k in ("type", "call_id", "name", "arguments")} == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "shell",
        "arguments": '{"cmd": "ls"}',
    }
    assert out["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 0},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 110,
    }
    truncated = {
        "id": "m",
        "content": [{"type": "text", "text": "abc"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    out = anthropic_to_responses_response(truncated, "alias")
    assert out["status"] == "incomplete" and out["incomplete_details"] == {
        "reason": "max_output_tokens"
    }


# --------------------------------------------------------------------------- streams: clients


def anthropic_client(events: list[tuple[str, Json]]) -> Json:
    """What an Anthropic SDK client makes of a stream; checks the event grammar on the way."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert (
        names.count("message_start")
        == names.count("message_stop")
        == names.count("message_delta")
        == 1
    )
    message: Json = {}
    partial: dict[int, str] = {}
    open_blocks: set[int] = set()
    for name, data in events:
        assert data["type"] == name
        if name == "message_start":
            message = copy.deepcopy(data["message"])
        elif name == "content_block_start":
            assert data["index"] == len(message["content"])
            open_blocks.add(data["index"])
            message["content"].append(copy.deepcopy(data["content_block"]))
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
            block = message["content"][data["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads(partial.get(data["index"]) or "{}")
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    assert not open_blocks
    return message


def chat_client(chunks: list[Json]) -> Json:
    """What an OpenAI SDK client makes of a chat.completion.chunk stream."""
    content, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            assert chunk["choices"] == [] and chunk is chunks[-1]
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            assert finish is None, "nothing follows finish_reason but usage"
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    tool_calls = [
        {"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])}
        for _, c in sorted(calls.items())
    ]
    return {"content": content, "tool_calls": tool_calls, "finish_reason": finish, "usage": usage}


def chat_message(resp: Json) -> Json:
    choice = resp["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    return {
        "content": choice["message"]["content"] or "",
        "tool_calls": [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"]),
            }
            for c in calls
        ],
        "finish_reason": choice["finish_reason"],
        "usage": resp["usage"],
    }


def responses_client(events: list[tuple[str, Json]]) -> Json:
    """What the Codex CLI makes of a Responses stream; checks ids and sequence numbers."""
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    assert [n for n, _ in events].count("response.completed") == 1
    added: dict[str, Json] = {}
    deltas: dict[str, str] = {}
    done: list[Json] = []
    for name, data in events:
        assert data["type"] == name
        if name == "response.output_item.added":
            added[data["item"]["id"]] = data["item"]
        elif name in (
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
        ):
            assert data["item_id"] in added
            deltas[data["item_id"]] = deltas.get(data["item_id"], "") + data["delta"]
        elif name == "response.custom_tool_call_input.done":
            assert data["input"] == deltas.get(data["item_id"], "")
        elif name == "response.output_item.done":
            item = data["item"]
            assert item["id"] in added and item["status"] == "completed"
            if item["type"] == "message":
                assert item["content"][0]["text"] == deltas.get(item["id"], "")
            elif item["type"] == "custom_tool_call":
                assert item["call_id"] and "arguments" not in item
                assert item["input"] == deltas.get(item["id"], "")
            else:
                assert item["call_id"] and json.loads(item["arguments"]) == json.loads(
                    deltas.get(item["id"]) or "{}"
                )
            done.append(item)
    response = events[-1][1]["response"]
    assert response["output"] == done
    return response


def responses_meaning(response: Json) -> Json:
    # Chat Completions keeps no order between a reply's text and its calls.
    output = response["output"]
    return {
        "status": response["status"],
        "text": "".join(p["text"] for i in output if i["type"] == "message" for p in i["content"]),
        "calls": [
            (i["call_id"], i["name"], json.loads(i["arguments"]))
            for i in output
            if i["type"] == "function_call"
        ],
        "usage": response["usage"],
    }


# --------------------------------------------------------------------------- streams: upstreams


@st.composite
def chat_replies(draw: st.DrawFn) -> Json:
    text = draw(st.text(max_size=40))
    calls = [
        {
            "id": f"call_{i}_{draw(ids)}",
            "type": "function",
            "function": {
                "name": draw(names),
                "arguments": json.dumps(draw(tool_inputs), ensure_ascii=False),
            },
        }
        for i in range(draw(st.integers(0, 3)))
    ]
    prompt = draw(st.integers(0, 10**6))
    completion = draw(st.integers(0, 10**5))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))},
        "completion_tokens_details": {"reasoning_tokens": draw(st.integers(0, completion))},
    }
    message: Json = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    finish = draw(st.sampled_from(["tool_calls", "length"] if calls else ["stop", "length"]))
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def chat_chunks(data: st.DataObject, reply: Json, with_usage: bool) -> list[Json]:
    """A realistic upstream stream of `reply`, its deltas split where hypothesis likes."""

    def chunk(delta: Json, finish: str | None = None) -> Json:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    message = reply["choices"][0]["message"]
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in split(data, message["content"] or "")]
    for i, call in enumerate(message.get("tool_calls") or []):
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        for piece in split(data, call["function"]["arguments"]):
            chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    chunks.append(chunk({}, reply["choices"][0]["finish_reason"]))
    if with_usage:
        chunks.append({**chunk({}), "choices": [], "usage": reply["usage"]})
    return chunks


@st.composite
def anthropic_replies(draw: st.DrawFn) -> Json:
    content: list[Json] = []
    for i, kind in enumerate(
        draw(st.lists(st.sampled_from(["text", "tool_use", "thinking"]), max_size=5))
    ):
        if kind == "text":
            content.append({"type": "text", "text": draw(st.text(max_size=30))})
        elif kind == "thinking":
            content.append({"type": "thinking", "thinking": draw(texts), "signature": "c2lnbmVk"})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{i}_{draw(ids)}",
                    "name": draw(names),
                    "input": draw(tool_inputs),
                }
            )
    uses_tools = any(b["type"] == "tool_use" for b in content)
    stop = draw(
        st.sampled_from(
            ["tool_use", "max_tokens"]
            if uses_tools
            else ["end_turn", "max_tokens", "stop_sequence"]
        )
    )
    usage = {
        "input_tokens": draw(st.integers(0, 10**5)),
        "cache_read_input_tokens": draw(st.integers(0, 10**6)),
        "cache_creation_input_tokens": draw(st.integers(0, 10**5)),
        "output_tokens": draw(st.integers(1, 10**5)),
    }
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_events(data: st.DataObject, reply: Json) -> list[tuple[str, Json]]:
    """A realistic Anthropic stream of `reply`, its deltas split where hypothesis likes."""

    def event(name: str, **fields: Any) -> tuple[str, Json]:
        return name, {"type": name, **fields}

    start_usage = {**reply["usage"], "output_tokens": 1}
    events = [
        event(
            "message_start",
            message={**reply, "content": [], "stop_reason": None, "usage": start_usage},
        )
    ]
    for index, block in enumerate(reply["content"]):
        if data.draw(st.booleans()):
            events.append(event("ping"))
        if block["type"] == "text":
            events.append(
                event(
                    "content_block_start", index=index, content_block={"type": "text", "text": ""}
                )
            )
            for piece in split(data, block["text"]):
                events.append(
                    event(
                        "content_block_delta",
                        index=index,
                        delta={"type": "text_delta", "text": piece},
                    )
                )
        elif block["type"] == "thinking":
            events.append(
                event(
                    "content_block_start",
                    index=index,
                    content_block={"type": "thinking", "thinking": "", "signature": ""},
                )
            )
            for piece in split(data, block["thinking"]):
                events.append(
                    event(
                        "content_block_delta",
                        index=index,
                        delta={"type": "thinking_delta", "thinking": piece},
                    )
                )
            events.append(
                event(
                    "content_block_delta",
                    index=index,
                    delta={"type": "signature_delta", "signature": block["signature"]},
                )
            )
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append(event("content_block_start", index=index, content_block=head))
            arguments = (
                json.dumps(block["input"]) if block["input"] else ""
            )  # no-argument tools stream no JSON
            for piece in split(data, arguments):
                events.append(
                    event(
                        "content_block_delta",
                        index=index,
                        delta={"type": "input_json_delta", "partial_json": piece},
                    )
                )
        events.append(event("content_block_stop", index=index))
    events.append(
        event(
            "message_delta",
            delta={"stop_reason": reply["stop_reason"], "stop_sequence": None},
            usage={"output_tokens": reply["usage"]["output_tokens"]},
        )
    )
    events.append(event("message_stop"))
    return events


def anthropic_meaning_of_reply(message: Json) -> Json:
    return {k: message[k] for k in ("content", "stop_reason", "usage", "role", "type", "model")}


@SETTINGS
@given(chat_replies(), st.booleans(), st.data())
def test_openai_stream_reassembles_to_the_non_streaming_anthropic_message(
    reply: Json, with_usage: bool, data: st.DataObject
) -> None:
    converter = OpenAIStreamToAnthropic("alias")
    events = [e for c in chat_chunks(data, reply, with_usage) for e in converter.feed(c)]
    assert converter.complete
    events += converter.finish()
    assert converter.finish() == []
    if not with_usage:  # the upstream ignored stream_options: usage unknown, not invented
        reply = {**reply, "usage": None}
    expected = openai_to_anthropic_response(reply, "alias")
    assert anthropic_meaning_of_reply(anthropic_client(events)) == anthropic_meaning_of_reply(
        expected
    )
    assert converter.usage == usage_from_openai(reply["usage"] or {})


@SETTINGS
@given(anthropic_replies(), st.data())
def test_anthropic_stream_reassembles_to_the_non_streaming_chat_completion(
    reply: Json, data: st.DataObject
) -> None:
    converter = AnthropicStreamToOpenAI("alias", include_usage=True)
    chunks = [c for name, d in anthropic_events(data, reply) for c in converter.feed(name, d)]
    assert converter.complete
    chunks += converter.finish()
    assert all(c["model"] == "alias" for c in chunks)
    assert chat_client(chunks) == chat_message(anthropic_to_openai_response(reply, "alias"))
    assert converter.usage == usage_from_anthropic(reply["usage"])
    assert converter.usage.total_input == sum(
        reply["usage"][k]
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )


@SETTINGS
@given(chat_replies(), st.booleans(), st.data())
def test_chat_stream_reassembles_to_the_non_streaming_responses_object(
    reply: Json, with_usage: bool, data: st.DataObject
) -> None:
    converter = ChatStreamToResponses("alias")
    events = [e for c in chat_chunks(data, reply, with_usage) for e in converter.feed(c)]
    events += converter.finish()
    if not with_usage:  # unknown usage is shown as unknown, not as zero
        reply = {**reply, "usage": None}
    expected = chat_to_responses_response(reply, "alias")
    assert responses_meaning(responses_client(events)) == responses_meaning(expected)


@SETTINGS
@given(anthropic_replies(), st.data())
def test_anthropic_stream_reassembles_to_the_non_streaming_responses_object(
    reply: Json, data: st.DataObject
) -> None:
    converter = AnthropicStreamToResponses("alias")
    events = [e for name, d in anthropic_events(data, reply) for e in converter.feed(name, d)]
    events += converter.finish()
    expected = anthropic_to_responses_response(reply, "alias")
    assert responses_meaning(responses_client(events)) == responses_meaning(expected)
    assert converter.complete and converter.usage == usage_from_anthropic(reply["usage"])


def test_stream_closes_as_soon_as_usage_follows_finish_reason() -> None:
    converter = OpenAIStreamToAnthropic("alias")
    base = {"id": "x", "object": "chat.completion.chunk", "model": "up"}
    assert [
        n
        for n, _ in converter.feed(
            {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        )
    ] == ["message_start", "content_block_start", "content_block_delta"]
    assert [
        n
        for n, _ in converter.feed(
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
    ] == ["content_block_stop"]
    closing = converter.feed(
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    )
    assert [n for n, _ in closing] == ["message_delta", "message_stop"]
    assert closing[0][1]["usage"]["input_tokens"] == 3
    assert converter.finish() == []


def test_stream_without_indexes_on_tool_calls() -> None:
    converter = ChatStreamToResponses("alias")
    base = {"id": "x", "object": "chat.completion.chunk", "model": "up"}
    for delta in (
        {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":'}}]},
        {"tool_calls": [{"function": {"arguments": " 1}"}}]},
        {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]},
    ):
        converter.feed({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    converter.feed({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    response = converter.finish()[-1][1]["response"]
    assert [(i["call_id"], i["arguments"]) for i in response["output"]] == [
        ("a", '{"x": 1}'),
        ("b", "{}"),
    ]


def test_upstream_errors_mid_stream_are_never_a_success() -> None:
    converter = AnthropicStreamToOpenAI("alias", include_usage=False)
    converter.feed("message_start", {"type": "message_start", "message": {"id": "m", "usage": {}}})
    with pytest.raises(UpstreamStreamError, match="Overloaded"):
        converter.feed(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    assert not converter.complete
    for chat_converter in (OpenAIStreamToAnthropic("a"), ChatStreamToResponses("a")):
        with pytest.raises(UpstreamStreamError, match="boom"):
            chat_converter.feed({"error": {"message": "boom"}})
        assert not chat_converter.complete


# --------------------------------------------------------------------------- official SDK types


@settings(SETTINGS, max_examples=15)
@given(anthropic_replies(), chat_replies(), st.data())
def test_what_clients_receive_validates_against_the_official_sdk_types(
    anthropic_reply: Json, chat_reply: Json, data: st.DataObject
) -> None:
    """Strict pydantic validation by the SDKs the agents' CLIs are built like."""
    anthropic_types = pytest.importorskip("anthropic.types")
    openai_chat = pytest.importorskip("openai.types.chat")
    openai_responses = pytest.importorskip("openai.types.responses")
    from pydantic import TypeAdapter

    anthropic_event = TypeAdapter(anthropic_types.RawMessageStreamEvent)
    responses_event = TypeAdapter(openai_responses.ResponseStreamEvent)

    to_anthropic = OpenAIStreamToAnthropic("alias")
    to_responses = ChatStreamToResponses("alias")
    for chunk in chat_chunks(data, chat_reply, with_usage=True):
        for _, event in to_anthropic.feed(chunk):
            anthropic_event.validate_python(event)
        for _, event in to_responses.feed(chunk):
            responses_event.validate_python(event)
    for _, event in to_anthropic.finish() + to_responses.finish():
        (anthropic_event if "sequence_number" not in event else responses_event).validate_python(
            event
        )

    to_chat = AnthropicStreamToOpenAI("alias", include_usage=True)
    anthropic_to_responses = AnthropicStreamToResponses("alias")
    for name, event in anthropic_events(data, anthropic_reply):
        for chunk in to_chat.feed(name, event):
            openai_chat.ChatCompletionChunk.model_validate(chunk)
        for _, out in anthropic_to_responses.feed(name, event):
            responses_event.validate_python(out)
    for chunk in to_chat.finish():
        openai_chat.ChatCompletionChunk.model_validate(chunk)
    for _, out in anthropic_to_responses.finish():
        responses_event.validate_python(out)

    anthropic_types.Message.model_validate(openai_to_anthropic_response(chat_reply, "alias"))
    openai_chat.ChatCompletion.model_validate(
        anthropic_to_openai_response(anthropic_reply, "alias")
    )
    openai_responses.Response.model_validate(chat_to_responses_response(chat_reply, "alias"))
    openai_responses.Response.model_validate(
        anthropic_to_responses_response(anthropic_reply, "alias")
    )


# --------------------------------------------------------------------------- Codex's tool shapes
#
# Codex's default model declares its tools in an `additional_tools` input item, inside
# namespaces, and its main tool (`exec`) is freeform (`custom`). Another vendor sees them
# as plain functions; their calls come back as Codex declared them.

EXEC_GRAMMAR = "start: SOURCE\nSOURCE: /[\\\\s\\\\S]+/\n"
CODEX_TOOLS_ITEM: Json = {
    "type": "additional_tools",
    "id": "at_1",
    "role": "developer",
    "tools": [
        {
            "type": "namespace",
            "name": "functions",
            "description": "",
            "tools": [
                {
                    "type": "custom",
                    "name": "exec",
                    "description": "Run JavaScript.",
                    "format": {"type": "grammar", "syntax": "lark", "definition": EXEC_GRAMMAR},
                },
                {
                    "type": "function",
                    "name": "wait",
                    "description": "Wait on a cell.",
                    "strict": False,
                    "parameters": {"type": "object", "properties": {"cell_id": {"type": "string"}}},
                },
            ],
        },
        {
            "type": "namespace",
            "name": "clock",
            "description": "Tools for time.",
            "tools": [
                {
                    "type": "function",
                    "name": "sleep",
                    "description": "Pause.",
                    "strict": False,
                    "parameters": {
                        "type": "object",
                        "properties": {"duration_ms": {"type": "number"}},
                    },
                }
            ],
        },
        {"type": "web_search"},  # hosted: no other vendor can run it
    ],
}
JS = 'const r = await tools.exec_command({cmd: "ls"});\ntext(r);'


def codex_default_request(*history: Json) -> Json:
    """What Codex 0.169 sends for its default model: no `tools`, an `additional_tools` item."""
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}
    return {
        "model": "gpt-6.1-sol",
        "input": [CODEX_TOOLS_ITEM, user, *history],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "stream": True,
    }


def chat_reply_calling(*calls: tuple[str, str, str]) -> Json:
    tool_calls = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": tool_calls},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


def anthropic_reply_calling(*calls: tuple[str, str, Json]) -> Json:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": [
            {"type": "tool_use", "id": call_id, "name": name, "input": arguments}
            for call_id, name, arguments in calls
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def without_ids(items: list[Json]) -> list[Json]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


EXEC_CALL: Json = {
    "type": "custom_tool_call",
    "status": "completed",
    "call_id": "call_x",
    "name": "exec",
    "namespace": "functions",
    "input": JS,
}
SLEEP_CALL: Json = {
    "type": "function_call",
    "status": "completed",
    "call_id": "call_s",
    "name": "sleep",
    "namespace": "clock",
    "arguments": '{"duration_ms": 5}',
}


def test_additional_tools_item_and_namespaces_become_chat_tools() -> None:
    out = responses_to_chat_request(codex_default_request(), "local")
    assert [t["function"]["name"] for t in out["tools"]] == ["exec", "wait", "clock__sleep"]
    exec_fn, wait_fn, sleep_fn = (t["function"] for t in out["tools"])
    # A freeform tool: one string parameter, its description and grammar for the model.
    assert exec_fn["parameters"] == {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's input."}},
        "required": ["input"],
        "additionalProperties": False,
    }
    assert exec_fn["description"].startswith("Run JavaScript.")
    assert "lark grammar" in exec_fn["description"]
    assert EXEC_GRAMMAR.strip() in exec_fn["description"]
    assert wait_fn == {
        "name": "wait",
        "description": "Wait on a cell.",
        "parameters": CODEX_TOOLS_ITEM["tools"][0]["tools"][1]["parameters"],
    }
    # The namespace's description tells the model what the flattened tool belongs to.
    assert sleep_fn["description"] == "Tools for time.\n\nPause."
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is True
    # The item itself is no message.
    assert out["messages"] == [{"role": "user", "content": "go"}]
    assert responses_tools(codex_default_request()) == {
        "exec": ClientTool("exec", "functions", custom=True),
        "wait": ClientTool("wait", "functions"),
        "clock__sleep": ClientTool("sleep", "clock"),
    }
    # And on to Anthropic.
    anthropic = openai_to_anthropic_request(out, "claude")
    assert [t["name"] for t in anthropic["tools"]] == ["exec", "wait", "clock__sleep"]
    assert anthropic["tools"][0]["input_schema"]["required"] == ["input"]


def test_top_level_tools_and_additional_tools_together_first_name_wins() -> None:
    body = codex_default_request()
    body["tools"] = [
        {"type": "function", "name": "exec", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch", "description": "Edit files."},
        {"type": "local_shell"},
    ]
    out = responses_to_chat_request(body, "local")
    assert [t["function"]["name"] for t in out["tools"]] == [
        "exec",
        "apply_patch",
        "wait",
        "clock__sleep",
    ]
    tools = responses_tools(body)
    assert tools["exec"] == ClientTool("exec")  # the top-level function came first
    assert tools["apply_patch"] == ClientTool("apply_patch", custom=True)
    assert "raw text" in out["tools"][1]["function"]["description"]


def test_flat_names_stay_valid_function_names() -> None:
    long = "n" * 70
    body = {
        "input": [],
        "tools": [
            {
                "type": "namespace",
                "name": "mcp__my.server",
                "description": "",
                "tools": [
                    {"type": "function", "name": "get-doc", "parameters": {}},
                    {"type": "function", "name": long, "parameters": {}},
                ],
            }
        ],
    }
    names = list(responses_tools(body))
    assert names[0] == "mcp__my_server__get-doc"
    assert len(names[1]) == 64 and names[1].startswith("mcp__my_server__nnn")
    assert responses_tools(body)[names[1]] == ClientTool(long, "mcp__my.server")


def test_namespaced_call_round_trips_through_chat_and_anthropic() -> None:
    tools = responses_tools(codex_default_request())
    reply = chat_reply_calling(("call_s", "clock__sleep", '{"duration_ms": 5}'))
    out = chat_to_responses_response(reply, "alias", tools)
    assert without_ids(out["output"]) == [SLEEP_CALL]
    assert out["output"][0]["id"].startswith("fc_")
    anthropic = anthropic_reply_calling(("call_s", "clock__sleep", {"duration_ms": 5}))
    out = anthropic_to_responses_response(anthropic, "alias", tools)
    assert without_ids(out["output"]) == [SLEEP_CALL]

    # Codex sends the call and its output back: the other vendor sees its own name again.
    output = {"type": "function_call_output", "call_id": "call_s", "output": "slept"}
    chat = responses_to_chat_request(codex_default_request(SLEEP_CALL, output), "local")
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_s",
                    "type": "function",
                    "function": {"name": "clock__sleep", "arguments": '{"duration_ms": 5}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_s", "content": "slept"},
    ]
    blocks = openai_to_anthropic_request(chat, "claude")["messages"][1]["content"]
    assert blocks == [
        {"type": "tool_use", "id": "call_s", "name": "clock__sleep", "input": {"duration_ms": 5}}
    ]


def test_custom_tool_call_and_output_round_trip() -> None:
    tools = responses_tools(codex_default_request())
    reply = chat_reply_calling(("call_x", "exec", json.dumps({"input": JS})))
    out = chat_to_responses_response(reply, "alias", tools)
    assert without_ids(out["output"]) == [EXEC_CALL]
    assert out["output"][0]["id"].startswith("ctc_")
    out = anthropic_to_responses_response(
        anthropic_reply_calling(("call_x", "exec", {"input": JS})), "alias", tools
    )
    assert without_ids(out["output"]) == [EXEC_CALL]

    # The next request carries the call and Codex's `custom_tool_call_output` (content items).
    result = {
        "type": "custom_tool_call_output",
        "call_id": "call_x",
        "output": [
            {"type": "input_text", "text": "Script completed"},
            {"type": "input_text", "text": "a.py"},
        ],
    }
    chat = responses_to_chat_request(codex_default_request(EXEC_CALL, result), "local")
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_x",
                    "type": "function",
                    "function": {"name": "exec", "arguments": json.dumps({"input": JS})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_x", "content": "Script completed\n\na.py"},
    ]
    anthropic = openai_to_anthropic_request(chat, "claude")["messages"]
    assert anthropic[1]["content"] == [
        {"type": "tool_use", "id": "call_x", "name": "exec", "input": {"input": JS}}
    ]
    assert anthropic[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_x", "content": "Script completed\n\na.py"}
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (json.dumps({"input": JS}), JS),
        (JS, JS),  # a model that writes the raw text instead of JSON
        (json.dumps({"code": JS}), JS),  # the text under another name
        ("", ""),
    ],
)
def test_custom_input_is_the_raw_text(arguments: str, expected: str) -> None:
    tools = responses_tools(codex_default_request())
    out = chat_to_responses_response(chat_reply_calling(("c", "exec", arguments)), "a", tools)
    assert out["output"][0]["input"] == expected


def test_calls_of_undeclared_tools_stay_plain_function_calls() -> None:
    tools = responses_tools(codex_default_request())
    reply = chat_reply_calling(("c1", "exec_command", '{"cmd": "ls"}'), ("c2", "x__y", "{}"))
    for given_tools in (tools, None):
        out = chat_to_responses_response(reply, "alias", given_tools)
        assert [(i["type"], i["name"], "namespace" in i) for i in out["output"]] == [
            ("function_call", "exec_command", False),
            ("function_call", "x__y", False),
        ]


def chat_stream_calling(pieces: list[list[str]], calls: list[tuple[str, str]]) -> list[Json]:
    def chunk(delta: Json, finish: str | None = None) -> Json:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "c", "object": "chat.completion.chunk", "model": "up", "choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    for index, ((call_id, name), parts) in enumerate(zip(calls, pieces, strict=True)):
        head = {"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(chunk({"tool_calls": [{"index": index, **head}]}))
        for part in parts:
            delta = {"index": index, "function": {"arguments": part}}
            chunks.append(chunk({"tool_calls": [delta]}))
    chunks.append(chunk({}, "tool_calls"))
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    return [*chunks, {**chunk({}), "choices": [], "usage": usage}]


def test_chat_stream_of_custom_and_namespaced_calls() -> None:
    tools = responses_tools(codex_default_request())
    exec_arguments = json.dumps({"input": JS})
    pieces = [
        [exec_arguments[:7], exec_arguments[7:20], exec_arguments[20:]],
        ['{"duration', '_ms": 5}'],
    ]
    converter = ChatStreamToResponses("alias", tools)
    chunks = chat_stream_calling(pieces, [("call_x", "exec"), ("call_s", "clock__sleep")])
    events = [e for c in chunks for e in converter.feed(c)]
    events += converter.finish()
    response = responses_client(events)
    assert without_ids(response["output"]) == [EXEC_CALL, SLEEP_CALL]
    names = [n for n, _ in events]
    assert names == [
        "response.created",
        "response.output_item.added",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert without_ids(added) == [
        {**EXEC_CALL, "status": "in_progress", "input": ""},
        {**SLEEP_CALL, "status": "in_progress", "arguments": ""},
    ]
    # The JSON around the custom input never reaches the client.
    custom = [d["item"] for _, d in events if d.get("item", {}).get("type") == "custom_tool_call"]
    assert len(custom) == 2 and all("arguments" not in item for item in custom)
    assert [d["delta"] for n, d in events if n.endswith("custom_tool_call_input.delta")] == [JS]
    # Streaming and not streaming agree.
    whole = chat_to_responses_response(
        chat_reply_calling(
            ("call_x", "exec", exec_arguments),
            ("call_s", "clock__sleep", pieces[1][0] + pieces[1][1]),
        ),
        "alias",
        tools,
    )
    assert without_ids(whole["output"]) == without_ids(response["output"])


def test_anthropic_stream_of_custom_and_namespaced_calls() -> None:
    tools = responses_tools(codex_default_request())
    exec_json = json.dumps({"input": JS})

    def event(name: str, **fields: Any) -> tuple[str, Json]:
        return name, {"type": name, **fields}

    usage = {"input_tokens": 10, "output_tokens": 1}
    events = [
        event("message_start", message={"id": "m", "usage": usage, "content": []}),
        event(
            "content_block_start",
            index=0,
            content_block={"type": "tool_use", "id": "call_x", "name": "exec", "input": {}},
        ),
        *[
            event(
                "content_block_delta",
                index=0,
                delta={"type": "input_json_delta", "partial_json": part},
            )
            for part in (exec_json[:5], exec_json[5:])
        ],
        event("content_block_stop", index=0),
        event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "call_s", "name": "clock__sleep", "input": {}},
        ),
        event(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": '{"duration_ms": 5}'},
        ),
        event("content_block_stop", index=1),
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 5}),
        event("message_stop"),
    ]
    converter = AnthropicStreamToResponses("alias", tools)
    out = [e for name, data in events for e in converter.feed(name, data)]
    out += converter.finish()
    response = responses_client(out)
    assert without_ids(response["output"]) == [EXEC_CALL, SLEEP_CALL]
    assert converter.complete


def test_custom_and_namespaced_call_events_validate_against_the_openai_sdk_types() -> None:
    openai_responses = pytest.importorskip("openai.types.responses")
    from pydantic import TypeAdapter

    responses_event = TypeAdapter(openai_responses.ResponseStreamEvent)
    tools = responses_tools(codex_default_request())
    converter = ChatStreamToResponses("alias", tools)
    chunks = chat_stream_calling(
        [[json.dumps({"input": JS})], ['{"duration_ms": 5}']],
        [("call_x", "exec"), ("call_s", "clock__sleep")],
    )
    events = [e for c in chunks for e in converter.feed(c)] + converter.finish()
    for _, event in events:
        responses_event.validate_python(event)
    reply = chat_reply_calling(("call_x", "exec", json.dumps({"input": JS})))
    openai_responses.Response.model_validate(chat_to_responses_response(reply, "alias", tools))
