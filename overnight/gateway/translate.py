"""Translation between the LLM wire formats the gateway speaks.

Owns how a request, a response, a stream and a usage record in one format
(Anthropic Messages, OpenAI Chat Completions, OpenAI Responses) become the same
thing in another, and which vendor-only state must go when a conversation moves
to a different vendor.

Knows nothing about HTTP, SSE framing, upstreams, routing, credentials or money:
every function takes and returns parsed JSON, and the stream converters take
parsed upstream events and return parsed client events. Stdlib only.

The stream converters share one contract: `feed()` each parsed upstream event
and send on what it returns; `finish()` closes the client's stream as a success,
so call it only once the upstream stream has ended, and look at `complete`
first: it is false when the upstream never said it was done (a cut stream). An
upstream error event raises `UpstreamStreamError`. `usage` holds the upstream's
own counts so far.

What cannot cross is dropped, never faked: thinking blocks and their signatures,
server-side tools (web search, code execution, local shell), reasoning items and
reasoning text, and which stop sequence ended an OpenAI reply. Responses tools
another vendor has no shape for cross as plain functions and come back as the
client declared them: a namespace's tools as `namespace__name`, a freeform
(`custom`) tool as a function of one string, `input` (see `responses_tools`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
Event = tuple[str, Json]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; OpenAI and Responses clients may omit it."""

# How several text blocks collapse into one OpenAI string (and back, streaming).
_JOIN = "\n\n"
# OpenAI tool messages have no `is_error`; this prefix carries it there and back.
_ERROR_MARK = "[tool error] "
# A model that emits non-JSON tool arguments keeps them here, for the client to reject.
_RAW_ARGUMENTS = "_raw_arguments"
_TEXT_PARTS = {"text", "input_text", "output_text"}

_STOP_TO_OPENAI = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_TO_ANTHROPIC = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class UpstreamStreamError(Exception):
    """The upstream reported an error inside a stream that had already started.

    Raised by the stream converters so that a failed stream can never be closed
    as a (truncated) success; the caller turns it into its client's error event.
    """

    def __init__(self, error: Any) -> None:
        self.error = error
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(str(message or error))


# --------------------------------------------------------------------------- usage


@dataclass(slots=True)
class Usage:
    """Tokens of one call, each counted once.

    `input_tokens` is the uncached input only; cache reads and writes are apart
    because they are priced apart. `output_tokens` includes `reasoning_tokens`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


def _int(value: Any) -> int:
    """A token count from an upstream's usage; anything that is not a whole number counts 0."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def _details(u: Json, key: str) -> Json:
    value = u.get(key)
    return value if isinstance(value, dict) else {}


def usage_from_anthropic(u: Json) -> Usage:
    """Anthropic's `input_tokens` already excludes both cache counts."""
    return Usage(
        input_tokens=_int(u.get("input_tokens")),
        output_tokens=_int(u.get("output_tokens")),
        cache_read_tokens=_int(u.get("cache_read_input_tokens")),
        cache_write_tokens=_int(u.get("cache_creation_input_tokens")),
        reasoning_tokens=_int(_details(u, "output_tokens_details").get("thinking_tokens")),
    )


def usage_from_openai(u: Json) -> Usage:
    """OpenAI's `prompt_tokens` includes the cached tokens (read and written): taken out."""
    details = _details(u, "prompt_tokens_details")
    # DeepSeek spells the cached count `prompt_cache_hit_tokens`.
    cached = _int(details.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens"))
    written = _int(details.get("cache_write_tokens"))
    return Usage(
        input_tokens=max(_int(u.get("prompt_tokens")) - cached - written, 0),
        output_tokens=_int(u.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_int(_details(u, "completion_tokens_details").get("reasoning_tokens")),
    )


def usage_from_responses(u: Json) -> Usage:
    """Responses' `input_tokens` includes the cached tokens, like Chat Completions."""
    details = _details(u, "input_tokens_details")
    cached = _int(details.get("cached_tokens"))
    written = _int(details.get("cache_write_tokens"))
    return Usage(
        input_tokens=max(_int(u.get("input_tokens")) - cached - written, 0),
        output_tokens=_int(u.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_int(_details(u, "output_tokens_details").get("reasoning_tokens")),
    )


def _merge_anthropic_usage(prev: Usage, u: Json) -> Usage:
    """A `message_delta` carries cumulative counts; absent ones keep their earlier value."""

    def pick(key: str, old: int) -> int:
        value = u.get(key)
        return old if value is None else int(value)

    return Usage(
        input_tokens=pick("input_tokens", prev.input_tokens),
        output_tokens=pick("output_tokens", prev.output_tokens),
        cache_read_tokens=pick("cache_read_input_tokens", prev.cache_read_tokens),
        cache_write_tokens=pick("cache_creation_input_tokens", prev.cache_write_tokens),
        reasoning_tokens=prev.reasoning_tokens,
    )


def _anthropic_usage(u: Usage) -> Json:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }


def _openai_usage(u: Usage) -> Json:
    return {
        "prompt_tokens": u.total_input,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_input + u.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _responses_usage(u: Usage) -> Json:
    return {
        "input_tokens": u.total_input,
        "input_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_input + u.output_tokens,
    }


# --------------------------------------------------------------------------- helpers


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _texts(content: Any) -> list[str]:
    """The non-empty text pieces of a content field: a string or a list of parts."""
    if isinstance(content, str):
        return [content] if content else []
    pieces: list[str] = []
    for part in content or []:
        if isinstance(part, str):
            text = part
        elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
            text = str(part.get("text") or "")
        else:
            continue
        if text:
            pieces.append(text)
    return pieces


def _tool_id(raw: Any) -> str:
    """Anthropic accepts only [A-Za-z0-9_-] in tool ids; some OpenAI servers send others."""
    if not raw:
        return _new_id("toolu")
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(raw))


def _parse_arguments(arguments: Any) -> Json:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {_RAW_ARGUMENTS: arguments}
    return value if isinstance(value, dict) else {_RAW_ARGUMENTS: arguments}


def _dump_arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _simplify_parts(parts: list[Json]) -> str | list[Json]:
    """A lone text part becomes a plain string: the form every OpenAI server accepts."""
    if len(parts) == 1 and parts[0].get("type") == "text":
        return str(parts[0]["text"])
    return parts


def _copy_sampling(body: Json, out: Json) -> None:
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]


def _anthropic_stop(finish_reason: Any, has_tool_calls: bool) -> str:
    # Some servers (Ollama, llama.cpp) say "stop" after a tool call.
    if finish_reason == "length":
        return "max_tokens"
    if has_tool_calls:
        return "tool_use"
    return _STOP_TO_ANTHROPIC.get(str(finish_reason), "end_turn")


def _openai_finish(stop_reason: Any) -> str:
    return _STOP_TO_OPENAI.get(str(stop_reason), "stop")


# --------------------------------------------------------------------------- images


def _image_to_openai(block: Json) -> Json | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        media = source.get("media_type") or "image/png"
        url = f"data:{media};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url") or ""
    else:  # file ids live in one vendor's file store
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _image_to_anthropic(part: Json) -> Json | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not url:
        return None
    url = str(url)
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media = header[len("data:") :].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


# --------------------------------------------------------------------------- tools


def _tools_to_openai(tools: Iterable[Json]) -> list[Json]:
    out = []
    for tool in tools:
        # Server tools (web search, bash_2025..., text_editor...) carry no schema:
        # only Anthropic can run them.
        if "input_schema" not in tool or not tool.get("name"):
            continue
        fn: Json = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tools_to_anthropic(tools: Iterable[Json]) -> list[Json]:
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        if tool.get("type", "function") != "function" or not fn.get("name"):
            continue
        spec: Json = {"name": fn["name"]}
        if fn.get("description"):
            spec["description"] = fn["description"]
        spec["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append(spec)
    return out


def _tool_choice_to_openai(choice: Json) -> Any:
    kind = choice.get("type")
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind == "none":
        return "none"
    return "auto"


def _tool_choice_to_anthropic(choice: Any) -> Json:
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"type": "tool", "name": name}
    return {"type": "auto"}


# --------------------------------------------------------------------------- Anthropic -> OpenAI


def _anthropic_tool_result(block: Json) -> tuple[Json, list[Json]]:
    """One `role: tool` message, and the images it held (a tool message cannot)."""
    content = block.get("content")
    text = _JOIN.join(_texts(content))
    if block.get("is_error"):
        text = _ERROR_MARK + text
    images = []
    if isinstance(content, list):
        images = [i for b in content if b.get("type") == "image" if (i := _image_to_openai(b))]
    message = {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
    return message, images


def _anthropic_user_to_openai(content: Any) -> list[Json]:
    """Tool results become `tool` messages first, then whatever else the user said."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    messages: list[Json] = []
    parts: list[Json] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "tool_result":
            message, images = _anthropic_tool_result(block)
            messages.append(message)
            parts.extend(images)
        elif kind == "text" and block.get("text"):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and (image := _image_to_openai(block)):
            parts.append(image)
        elif kind == "document" and (block.get("source") or {}).get("type") == "text":
            parts.append({"type": "text", "text": block["source"].get("data", "")})
    if parts:
        messages.append({"role": "user", "content": _simplify_parts(parts)})
    return messages


def _anthropic_assistant_to_openai(content: Any) -> Json:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[Json] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            texts.append(block["text"])
        elif kind == "tool_use":
            function = {"name": block.get("name"), "arguments": _dump_arguments(block.get("input"))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: Json = {"role": "assistant", "content": _JOIN.join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""  # OpenAI wants content when there are no tool calls
    return message


def _anthropic_messages_to_openai(body: Json) -> list[Json]:
    system = _texts(body.get("system"))
    messages: list[Json] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        if role == "system":  # Claude Code sends these inside `messages`
            system.extend(_texts(message.get("content")))
        elif role == "assistant":
            messages.append(_anthropic_assistant_to_openai(message.get("content")))
        else:
            messages.extend(_anthropic_user_to_openai(message.get("content")))
    if system:
        # One leading system message: local chat templates reject system turns elsewhere.
        messages.insert(0, {"role": "system", "content": _JOIN.join(system)})
    return messages


def anthropic_to_openai_request(body: Json, model: str) -> Json:
    """An Anthropic Messages request as a Chat Completions request for `model`."""
    out: Json = {"model": model, "messages": _anthropic_messages_to_openai(body)}
    if body.get("max_tokens") is not None:
        # The current spec's name; OpenAI reasoning models reject `max_tokens`.
        out["max_completion_tokens"] = body["max_tokens"]
    _copy_sampling(body, out)
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    tools = _tools_to_openai(body.get("tools") or [])
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice") or {}
        if choice:
            out["tool_choice"] = _tool_choice_to_openai(choice)
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # else no usage to meter
    return out


# --------------------------------------------------------------------------- OpenAI -> Anthropic


def _openai_user_blocks(content: Any) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Json] = []
    for part in content or []:
        kind = part.get("type")
        if kind in _TEXT_PARTS and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind in ("image_url", "input_image") and (image := _image_to_anthropic(part)):
            blocks.append(image)
    return blocks


def _tool_use_block(call: Json) -> Json:
    fn = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": _tool_id(call.get("id")),
        "name": fn.get("name") or "",
        "input": _parse_arguments(fn.get("arguments")),
    }


def _openai_assistant_blocks(message: Json) -> list[Json]:
    blocks: list[Json] = [{"type": "text", "text": t} for t in _texts(message.get("content"))]
    blocks.extend(_tool_use_block(call) for call in message.get("tool_calls") or [])
    return blocks


def _openai_tool_result(message: Json) -> Json:
    text = _JOIN.join(_texts(message.get("content")))
    block: Json = {"type": "tool_result", "tool_use_id": _tool_id(message.get("tool_call_id"))}
    if text.startswith(_ERROR_MARK):
        block["content"] = text[len(_ERROR_MARK) :]
        block["is_error"] = True
    else:
        block["content"] = text
    return block


def _append_turn(messages: list[Json], role: str, blocks: list[Json]) -> None:
    """Consecutive turns of one role merge: a tool result and the next user text share a turn."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _openai_messages_to_anthropic(messages: Iterable[Json]) -> tuple[list[str], list[Json]]:
    system: list[str] = []
    out: list[Json] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(message.get("content")))
        elif role == "assistant":
            _append_turn(out, "assistant", _openai_assistant_blocks(message))
        elif role == "tool":
            _append_turn(out, "user", [_openai_tool_result(message)])
        elif role == "user":
            _append_turn(out, "user", _openai_user_blocks(message.get("content")))
    return system, out


def openai_to_anthropic_request(body: Json, model: str) -> Json:
    """A Chat Completions request as an Anthropic Messages request for `model`."""
    system, messages = _openai_messages_to_anthropic(body.get("messages") or [])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    out: Json = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = [{"type": "text", "text": text} for text in system]
    _copy_sampling(body, out)
    if "temperature" in out:
        out["temperature"] = min(float(out["temperature"]), 1.0)  # Anthropic's range is 0..1
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s.strip()]  # Anthropic rejects whitespace-only sequences
    if stops:
        out["stop_sequences"] = stops
    tools = _tools_to_anthropic(body.get("tools") or [])
    if tools:
        out["tools"] = tools
        choice = _tool_choice_to_anthropic(body.get("tool_choice", "auto"))
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
    return out


# --------------------------------------------------------------------------- Responses -> Chat


def _responses_content(content: Any, role: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if role != "user":
        return _JOIN.join(_texts(content))
    parts: list[Json] = []
    for part in content or []:
        kind = part.get("type")
        if kind in _TEXT_PARTS and part.get("text"):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and part.get("image_url"):  # file_id images stay behind
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    return _simplify_parts(parts) if parts else ""


# --- Responses tools that Chat Completions and Anthropic cannot declare as such.
#
# What the Codex sources (openai/codex) say, and Codex 0.169 confirmed against a
# scripted Responses server:
# - codex-rs/protocol/src/models.rs: `ResponseItem::AdditionalTools { id, role, tools }`
#   is an input item (`"type": "additional_tools"`) carrying tool declarations; Codex's
#   default model sends its tools only there, with no top-level `tools`.
# - codex-rs/tools/src/tool_spec.rs: `ToolSpec::Namespace(ResponsesApiNamespace { name,
#   description, tools })` (`"type": "namespace"`), whose nested tools are functions or
#   freeform (`custom`) tools; `ToolSpec::Freeform` is `"type": "custom"` with
#   `name`, `description` and `format` (e.g. `{"type": "grammar", "syntax": "lark", ...}`).
# - codex-rs/protocol/src/models.rs: a call to a namespaced tool keeps the split, as
#   `ResponseItem::FunctionCall { name, namespace: Option<String>, arguments, call_id }`
#   and `ResponseItem::CustomToolCall { call_id, name, namespace: Option<String>, input }`
#   (`"type": "custom_tool_call"`), answered by `CustomToolCallOutput { call_id, output }`
#   (`"type": "custom_tool_call_output"`, output a string or content items).
# - codex-rs/core/src/tools/router.rs `build_tool_call`: Codex dispatches on
#   `ToolName::new(namespace, name)`, so the namespace must come back as its own
#   field: a flat `clock__sleep` function call gets "unsupported call: clock__sleep",
#   `{"name": "sleep", "namespace": "clock"}` runs. Tools of the `functions`
#   namespace (Codex's default one) run with or without `"namespace": "functions"`.
# - codex-rs/protocol/src/tool_name.rs `canonical_flat_name`: where a boundary cannot
#   keep the split, Codex itself joins it as `namespace__name`; so does the gateway
#   for the other vendor, and maps the name back on the way out.
_DEFAULT_NAMESPACE = "functions"
_NAMESPACE_DELIMITER = "__"
_NAME_LIMIT = 64  # OpenAI's limit on function names (Anthropic allows as many)
_CUSTOM_INPUT = "input"  # the one string parameter a freeform tool becomes


@dataclass(frozen=True)
class ClientTool:
    """A Responses client's tool behind the flat function name another vendor sees."""

    name: str
    namespace: str | None = None
    custom: bool = False  # freeform: called with raw text, answered as `custom_tool_call`


ResponsesTools = dict[str, ClientTool]
"""Flat function name -> the tool the client declared; see `responses_tools`."""


def _flat_name(name: Any, namespace: Any = None) -> str:
    """The function name another vendor sees for a (namespaced) Responses tool."""
    flat = str(name or "")
    if namespace and namespace != _DEFAULT_NAMESPACE:
        flat = f"{str(namespace).rstrip('_')}{_NAMESPACE_DELIMITER}{flat.lstrip('_')}"
    flat = re.sub(r"[^A-Za-z0-9_-]", "_", flat)
    if len(flat) > _NAME_LIMIT:
        digest = hashlib.sha256(flat.encode()).hexdigest()[:8]
        flat = f"{flat[: _NAME_LIMIT - 9]}_{digest}"
    return flat


def _custom_tool_function(tool: Json, name: str, namespace_description: str) -> Json:
    description = str(tool.get("description") or "")
    fmt = tool.get("format") or {}
    if fmt.get("type") == "grammar" and fmt.get("definition"):
        description += (
            f"\n\nThis tool takes raw text, not JSON: put all of it in `{_CUSTOM_INPUT}`. "
            f"It must match this {fmt.get('syntax') or ''} grammar:\n{fmt['definition']}"
        )
    else:
        description += (
            f"\n\nThis tool takes raw text, not JSON: put all of it in `{_CUSTOM_INPUT}`."
        )
    if namespace_description:
        description = f"{namespace_description}\n\n{description}"
    parameters = {
        "type": "object",
        "properties": {_CUSTOM_INPUT: {"type": "string", "description": "The tool's input."}},
        "required": [_CUSTOM_INPUT],
        "additionalProperties": False,
    }
    return {"name": name, "description": description.strip(), "parameters": parameters}


def _plain_function(tool: Json, name: str, namespace_description: str) -> Json:
    fn: Json = {"name": name}
    description = _JOIN.join(d for d in (namespace_description, tool.get("description")) if d)
    if description:
        fn["description"] = description
    fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return fn


def _declared_tools(body: Json) -> list[Json]:
    """`tools`, then the tools of every `additional_tools` input item."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    items = body.get("input")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            tools.extend(t for t in item.get("tools") or [] if isinstance(t, dict))
    return tools


def _walk_tools(body: Json) -> list[tuple[Json, ClientTool]]:
    """Every declared tool another vendor can call, as (Chat function, client tool).

    Namespaces open into their function and custom tools; hosted tools (web_search,
    local_shell, image_generation, tool_search...) have no equivalent and stay behind.
    The first tool to claim a flat name keeps it.
    """
    out: list[tuple[Json, ClientTool]] = []
    seen: set[str] = set()

    def add(tool: Json, namespace: str | None, namespace_description: str) -> None:
        kind = tool.get("type")
        if kind not in ("function", "custom") or not tool.get("name"):
            return
        name = _flat_name(tool["name"], namespace)
        if name in seen:
            return
        seen.add(name)
        custom = kind == "custom"
        make = _custom_tool_function if custom else _plain_function
        out.append(
            (make(tool, name, namespace_description), ClientTool(tool["name"], namespace, custom))
        )

    for tool in _declared_tools(body):
        if tool.get("type") == "namespace" and tool.get("name"):
            description = str(tool.get("description") or "")
            for nested in tool.get("tools") or []:
                if isinstance(nested, dict):
                    add(nested, str(tool["name"]), description)
        else:
            add(tool, None, "")
    return out


def responses_tools(body: Json) -> ResponsesTools:
    """The tools of a Responses request by the flat name `responses_to_chat_request`
    gives them: pass it to the response converters so that a call comes back as the
    client declared it (its namespace, and a `custom_tool_call` for a freeform tool)."""
    return {fn["name"]: tool for fn, tool in _walk_tools(body)}


def _add_tool_call(messages: list[Json], call_id: Any, name: str, arguments: str) -> None:
    """Consecutive calls join one assistant turn, as Chat requires before their results."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
        if messages[-1].get("content") == "":
            messages[-1]["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_output_text(output: Any) -> str:
    return output if isinstance(output, str) else _JOIN.join(_texts(output))


def _responses_input_to_chat(items: Any, system: list[str]) -> list[Json]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Json] = []
    for item in items or []:
        kind = item.get("type", "message")  # easy input messages may omit the type
        if kind == "message":
            role = item.get("role", "user")
            if role in ("system", "developer"):
                system.extend(_texts(item.get("content")))
            else:
                content = _responses_content(item.get("content"), role)
                messages.append({"role": role, "content": content})
        elif kind == "function_call":
            name = _flat_name(item.get("name"), item.get("namespace"))
            call_id = item.get("call_id") or item.get("id")
            _add_tool_call(messages, call_id, name, item.get("arguments") or "{}")
        elif kind == "custom_tool_call":
            name = _flat_name(item.get("name"), item.get("namespace"))
            arguments = _dump_arguments({_CUSTOM_INPUT: str(item.get("input") or "")})
            _add_tool_call(messages, item.get("call_id") or item.get("id"), name, arguments)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            text = _function_output_text(item.get("output"))
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        # additional_tools items are read as tools (`_declared_tools`); reasoning items,
        # hosted tool calls and their outputs: no Chat Completions upstream can replay them.
    return messages


def _responses_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "custom") and choice.get("name"):
        name = _flat_name(choice["name"], choice.get("namespace"))
        return {"type": "function", "function": {"name": name}}
    return None


def _responses_format(body: Json) -> Json | None:
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        keys = ("name", "schema", "strict", "description")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in keys if k in fmt}}
    return None


def responses_to_chat_request(body: Json, model: str) -> Json:
    """An OpenAI Responses request as a Chat Completions request for `model`."""
    system = _texts(body.get("instructions"))
    messages = _responses_input_to_chat(body.get("input"), system)
    if system:
        messages.insert(0, {"role": "system", "content": _JOIN.join(system)})
    out: Json = {"model": model, "messages": messages}
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    _copy_sampling(body, out)
    tools = [{"type": "function", "function": fn} for fn, _ in _walk_tools(body)]
    if tools:
        out["tools"] = tools
        choice = _responses_tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    if (fmt := _responses_format(body)) is not None:
        out["response_format"] = fmt
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --------------------------------------------------------------------------- vendor state

# Request fields that only the vendor that issued them understands or accepts.
_ANTHROPIC_ONLY_FIELDS = frozenset(["thinking", "container", "mcp_servers", "context_management"])
_TOOL_MARKS = frozenset(["cache_control"])
_ANTHROPIC_VENDOR_BLOCKS = {
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
}
_OPENAI_ONLY_FIELDS = frozenset(
    [
        "store",
        "metadata",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "prediction",
    ]
)
_OPENAI_MESSAGE_FIELDS = frozenset(
    ["reasoning_content", "reasoning", "reasoning_details", "thinking_blocks"]
)
_RESPONSES_ONLY_FIELDS = frozenset(
    [
        "previous_response_id",
        "conversation",
        "store",
        "include",
        "background",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
    ]
)
_RESPONSES_VENDOR_ITEMS = {"reasoning", "item_reference", "compaction"}


_BLOCK_MARKS = frozenset(["cache_control", "citations"])  # citations point into the
# first vendor's search results


def _without(d: Json, keys: frozenset[str]) -> Json:
    """`d` itself when it holds none of `keys`, else a shallow copy without them."""
    if keys.isdisjoint(d):
        return d
    return {k: v for k, v in d.items() if k not in keys}


def _clean_anthropic_blocks(blocks: list[Any]) -> list[Any]:
    kept = []
    for block in blocks:
        if isinstance(block, dict):
            if block.get("type") in _ANTHROPIC_VENDOR_BLOCKS:
                continue
            block = _without(block, _BLOCK_MARKS)
            if isinstance(block.get("content"), list):
                block = {**block, "content": _clean_anthropic_blocks(block["content"])}
        kept.append(block)
    return kept


def _fold_into_system(body: Json, content: Any) -> None:
    """Claude Code's `role: system` turns, which other Anthropic-speaking servers reject."""
    system = body.get("system") or []
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    body["system"] = blocks + [{"type": "text", "text": text} for text in _texts(content)]


def _strip_anthropic(body: Json) -> Json:
    # With the signed thinking blocks gone, thinking must be off too: Anthropic
    # rejects a thinking request whose last tool-using turn lacks its thinking block.
    out = {k: v for k, v in body.items() if k not in _ANTHROPIC_ONLY_FIELDS}
    if isinstance(out.get("system"), list):
        out["system"] = _clean_anthropic_blocks(out["system"])
    if out.get("tools"):
        out["tools"] = [_without(t, _TOOL_MARKS) for t in out["tools"] if "input_schema" in t]
    messages = []
    for message in out.get("messages") or []:
        if message.get("role") == "system":
            _fold_into_system(out, message.get("content"))
            continue
        if isinstance(message.get("content"), list):
            content = _clean_anthropic_blocks(message["content"])
            if not content:
                continue
            message = {**message, "content": content}
        messages.append(message)
    out["messages"] = messages
    return out


def _strip_openai(body: Json) -> Json:
    out = {k: v for k, v in body.items() if k not in _OPENAI_ONLY_FIELDS}
    if isinstance(out.get("messages"), list):
        out["messages"] = [_without(m, _OPENAI_MESSAGE_FIELDS) for m in out["messages"]]
    return out


def _strip_responses(body: Json) -> Json:
    out = {k: v for k, v in body.items() if k not in _RESPONSES_ONLY_FIELDS}
    if isinstance(out.get("input"), list):
        out["input"] = [i for i in out["input"] if i.get("type") not in _RESPONSES_VENDOR_ITEMS]
    return out


def strip_vendor_state(body: Json, protocol: str) -> Json:
    """`body` without the state a different vendor would reject; `body` is left as it was.

    For a request (in its own `protocol`) that fails over to another vendor:
    signed thinking, server-side tool blocks, cache markers, stored-response
    references and reasoning items only mean something to the vendor that made
    them. The conversation's text, tool calls and tool results stay.

    Only what changes is copied: the result shares everything else with `body`
    (a deep copy of a long agent conversation cost more than the rest of its
    translation), so neither may be modified in place afterwards.
    """
    if protocol == "anthropic":
        return _strip_anthropic(body)
    if protocol == "openai":
        return _strip_openai(body)
    if protocol == "responses":
        return _strip_responses(body)
    raise ValueError(f"unknown protocol {protocol!r}: expected anthropic, openai or responses")


# --------------------------------------------------------------------------- responses


def _first_choice(resp: Json) -> Json:
    choices = resp.get("choices") or [{}]
    return dict(choices[0])


def openai_to_anthropic_response(resp: Json, model: str) -> Json:
    """A Chat Completions response as the Anthropic message a client expects."""
    choice = _first_choice(resp)
    message = choice.get("message") or {}
    texts = _texts(message.get("content"))
    calls = message.get("tool_calls") or []
    content = [{"type": "text", "text": _JOIN.join(texts)}] if texts else []
    content += [_tool_use_block(call) for call in calls]
    return {
        "id": f"msg_{resp.get('id') or uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop(choice.get("finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": _anthropic_usage(usage_from_openai(resp.get("usage") or {})),
    }


def anthropic_to_openai_response(resp: Json, model: str) -> Json:
    """An Anthropic message as the chat.completion an OpenAI client expects."""
    message = _anthropic_assistant_to_openai(resp.get("content"))
    message["refusal"] = None
    return {
        "id": f"chatcmpl-{resp.get('id') or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _openai_finish(resp.get("stop_reason")),
                "logprobs": None,
            }
        ],
        "usage": _openai_usage(usage_from_anthropic(resp.get("usage") or {})),
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> Json:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _custom_input(arguments: Any) -> str:
    """A freeform tool's raw text, from the arguments of the function it became."""
    value = _parse_arguments(arguments)
    for key in (_CUSTOM_INPUT, _RAW_ARGUMENTS):  # a model may write the text bare
        if isinstance(value.get(key), str):
            return str(value[key])
    texts = [v for v in value.values() if isinstance(v, str)]
    if len(value) == 1 and texts:  # the right text under another name
        return texts[0]
    return str(arguments or "")


def _call_item(call: Json, tools: ResponsesTools | None) -> Json:
    """A Chat tool call as the Responses output item its client tool expects:
    a `function_call` (with its `namespace`) or a `custom_tool_call`."""
    fn = call.get("function") or {}
    flat = str(fn.get("name") or "")
    tool = (tools or {}).get(flat) or ClientTool(flat)
    item: Json = {
        "id": _new_id("ctc" if tool.custom else "fc"),
        "type": "custom_tool_call" if tool.custom else "function_call",
        "status": "completed",
        "call_id": call.get("id") or _new_id("call"),
        "name": tool.name,
    }
    if tool.namespace:
        item["namespace"] = tool.namespace
    if tool.custom:
        item["input"] = _custom_input(fn.get("arguments"))
    else:
        item["arguments"] = fn.get("arguments") or "{}"
    return item


def _response_object(
    response_id: str,
    created_at: int,
    model: str,
    output: list[Json],
    usage: Usage | None,
    finish_reason: Any,
) -> Json:
    # A reply cut by the token limit is "incomplete", but it still arrives as
    # `response.completed` when streamed: Codex ends a turn only on that event.
    incomplete = finish_reason == "length"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "output": output,
        "usage": _responses_usage(usage) if usage is not None else None,
        # Echoes of request settings that typed clients require; the request is not known here.
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def chat_to_responses_response(resp: Json, model: str, tools: ResponsesTools | None = None) -> Json:
    """A Chat Completions response as the Responses object a client expects.

    `tools` (`responses_tools` of the client's request) turns calls of namespaced
    and freeform tools back into the items the client declared them as.
    """
    choice = _first_choice(resp)
    message = choice.get("message") or {}
    output = []
    text = _JOIN.join(_texts(message.get("content")))
    if text:
        output.append(_message_item(_new_id("msg"), text))
    output.extend(_call_item(call, tools) for call in message.get("tool_calls") or [])
    usage = usage_from_openai(resp["usage"]) if resp.get("usage") else None
    created = int(resp.get("created") or time.time())
    return _response_object(
        _new_id("resp"), created, model, output, usage, choice.get("finish_reason")
    )


def anthropic_to_responses_response(
    resp: Json, model: str, tools: ResponsesTools | None = None
) -> Json:
    """An Anthropic message as the Responses object a client expects (`tools`: as above)."""
    return chat_to_responses_response(anthropic_to_openai_response(resp, model), model, tools)


# --------------------------------------------------------------------------- streams


def _event(name: str, **fields: Any) -> Event:
    return name, {"type": name, **fields}


def _call_key(call: Json, last: Any) -> Any:
    """Which upstream tool call a delta extends: its index, else (servers that omit
    the index) its id, else the call before."""
    if call.get("index") is not None:
        return call["index"]
    return call.get("id") or last


def _check_chunk(chunk: Json) -> None:
    if chunk.get("error"):
        raise UpstreamStreamError(chunk["error"])


class OpenAIStreamToAnthropic:
    """chat.completion.chunk dicts in, Anthropic Messages stream events out.

    The closing events wait for the usage chunk that follows `finish_reason`
    when the request asked for it (`stream_options.include_usage`), or for
    `finish()`. `complete` says whether the upstream ended its reply properly.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage = Usage()
        self.complete = False
        self._started = False
        self._closed = False
        self._saw_usage = False
        self._finish_reason: Any = None
        self._blocks = 0
        self._open: tuple[int, str] | None = None  # (index, "text" | "tool_use")
        self._tools: dict[Any, int] = {}  # upstream tool-call key -> block index
        self._last_tool: Any = None

    @property
    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return self._closed

    def feed(self, chunk: Json) -> list[Event]:
        _check_chunk(chunk)
        if self._closed:
            return []
        out = [] if self._started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
            self._saw_usage = True
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self.complete = True
                out += self._close_block()
        if self.complete and self._saw_usage:
            out += self._close_message()
        return out

    def finish(self) -> list[Event]:
        out = [] if self._started else self._start({})
        if not self._closed:
            out += self._close_message()
        return out

    def _start(self, chunk: Json) -> list[Event]:
        self._started = True
        message: Json = {
            "id": f"msg_{chunk.get('id') or uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_event("message_start", message=message)]

    def _open_block(self, kind: str, block: Json) -> list[Event]:
        out = self._close_block()
        index = self._blocks
        self._blocks += 1
        self._open = (index, kind)
        return [*out, _event("content_block_start", index=index, content_block=block)]

    def _close_block(self) -> list[Event]:
        if self._open is None:
            return []
        index, _ = self._open
        self._open = None
        return [_event("content_block_stop", index=index)]

    def _text(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._open is None or self._open[1] != "text":
            out += self._open_block("text", {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        return [*out, _event("content_block_delta", index=self._open[0], delta=delta)]

    def _tool_call(self, call: Json) -> list[Event]:
        key = _call_key(call, self._last_tool)
        fn = call.get("function") or {}
        out: list[Event] = []
        if key not in self._tools:
            block: Json = {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": fn.get("name") or "",
                "input": {},
            }
            out += self._open_block("tool_use", block)
            self._tools[key] = self._blocks - 1
        self._last_tool = key
        if fn.get("arguments"):
            # Interleaved deltas for an earlier call keep that call's block index.
            delta = {"type": "input_json_delta", "partial_json": str(fn["arguments"])}
            out.append(_event("content_block_delta", index=self._tools[key], delta=delta))
        return out

    def _close_message(self) -> list[Event]:
        self._closed = True
        stop = _anthropic_stop(self._finish_reason, bool(self._tools))
        delta = {"stop_reason": stop, "stop_sequence": None}
        return [
            *self._close_block(),
            _event("message_delta", delta=delta, usage=_anthropic_usage(self.usage)),
            _event("message_stop"),
        ]


class AnthropicStreamToOpenAI:
    """Anthropic Messages stream events in, chat.completion.chunk dicts out.

    Thinking, signatures and server-tool blocks are not shown: Chat Completions
    has no place for them. `complete` says whether the upstream ended properly.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage = Usage()
        self.complete = False
        self._id = ""  # the upstream's message id, or (see `_chunk`) one of our own
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # Anthropic block index -> tool_calls index
        self._texts: set[int] = set()  # Anthropic block indexes that are text
        self._with_arguments: set[int] = set()  # tool blocks whose arguments were sent
        self._wrote_text = False
        self._join_next = False
        self._sent_finish = False
        self._sent_usage = False

    @property
    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return False  # a Chat client's stream ends with `[DONE]`, sent by the gateway

    def feed(self, event: str, data: Json) -> list[Json]:
        kind = data.get("type") or event
        if kind == "error":
            raise UpstreamStreamError(data.get("error") or data)
        if kind == "message_start":
            return self._message_start(data.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "content_block_stop":
            return self._block_stop(int(data.get("index", 0)))
        if kind == "message_stop":
            self.complete = True
            return self.finish()
        return []  # ping

    def finish(self) -> list[Json]:
        out = []
        if not self._sent_finish:
            out.append(self._chunk({}, "stop"))
            self._sent_finish = True
        if self.include_usage and not self._sent_usage:
            self._sent_usage = True
            out.append({**self._chunk({}), "choices": [], "usage": _openai_usage(self.usage)})
        return out

    def _chunk(self, delta: Json, finish_reason: str | None = None) -> Json:
        if not self._id:
            self._id = f"chatcmpl-{uuid.uuid4().hex}"
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [choice],
        }

    def _message_start(self, message: Json) -> list[Json]:
        if message.get("id"):
            self._id = f"chatcmpl-{message['id']}"
        self.usage = usage_from_anthropic(message.get("usage") or {})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: Json) -> list[Json]:
        kind = block.get("type")
        if kind == "text":
            self._texts.add(index)
            # The non-streaming translation joins text blocks with _JOIN; so must this.
            self._join_next = self._wrote_text
            return self._text(str(block.get("text") or ""))
        if kind != "tool_use":
            return []
        position = len(self._tools)
        self._tools[index] = position
        arguments = _dump_arguments(block["input"]) if block.get("input") else ""
        if arguments:
            self._with_arguments.add(index)
        call = {
            "index": position,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": arguments},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _text(self, text: str) -> list[Json]:
        if not text:
            return []
        if self._join_next:
            text = _JOIN + text
            self._join_next = False
        self._wrote_text = True
        return [self._chunk({"content": text})]

    def _block_delta(self, index: int, delta: Json) -> list[Json]:
        kind = delta.get("type")
        if kind == "text_delta" and index in self._texts:
            return self._text(str(delta.get("text") or ""))
        if kind == "input_json_delta" and index in self._tools and delta.get("partial_json"):
            self._with_arguments.add(index)
            return [self._arguments(index, str(delta["partial_json"]))]
        return []  # thinking_delta, signature_delta, citations_delta

    def _arguments(self, index: int, arguments: str) -> Json:
        call = {"index": self._tools[index], "function": {"arguments": arguments}}
        return self._chunk({"tool_calls": [call]})

    def _block_stop(self, index: int) -> list[Json]:
        # A tool without parameters streams no JSON at all; clients parse arguments.
        if index in self._tools and index not in self._with_arguments:
            self._with_arguments.add(index)
            return [self._arguments(index, "{}")]
        return []

    def _message_delta(self, data: Json) -> list[Json]:
        self.usage = _merge_anthropic_usage(self.usage, data.get("usage") or {})
        stop = (data.get("delta") or {}).get("stop_reason")
        if not stop or self._sent_finish:
            return []
        self.complete = True
        self._sent_finish = True
        return [self._chunk({}, _openai_finish(stop))]


class ChatStreamToResponses:
    """chat.completion.chunk dicts in, Responses stream events out.

    Emits what the Codex CLI consumes: `response.created`, an output item per
    message and per function call (`output_item.added`, deltas, `output_item.done`
    with `call_id`), and `response.completed` with usage, which ends a turn.
    Every event carries an increasing `sequence_number`. With `tools`
    (`responses_tools` of the request), a call keeps its `namespace`, and a call of
    a freeform tool is a `custom_tool_call` whose input is sent whole when the call
    ends (`response.custom_tool_call_input.delta` and `.done`): until then it is a
    fragment of the JSON arguments the other vendor streams.
    """

    def __init__(self, model: str, tools: ResponsesTools | None = None) -> None:
        self.model = model
        self.tools = tools or {}
        self.usage = Usage()
        self.complete = False
        self._id = _new_id("resp")
        self._created = int(time.time())
        self._seq = 0
        self._started = False
        self._closed = False
        self._saw_usage = False
        self._finish_reason: Any = None
        self._items: list[Json] = []  # output items, by output_index
        self._message: int | None = None  # output_index of the one message item
        self._text: list[str] = []
        self._calls: dict[Any, int] = {}  # upstream tool-call key -> output_index
        self._last_call: Any = None

    @property
    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return self._closed

    def feed(self, chunk: Json) -> list[Event]:
        _check_chunk(chunk)
        if self._closed:
            return []
        out = [] if self._started else self._start()
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
            self._saw_usage = True
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text_delta(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self.complete = True
        if self.complete and self._saw_usage:
            out += self._close()
        return out

    def finish(self) -> list[Event]:
        out = [] if self._started else self._start()
        if not self._closed:
            out += self._close()
        return out

    def _emit(self, name: str, **fields: Any) -> Event:
        event = _event(name, sequence_number=self._seq, **fields)
        self._seq += 1
        return event

    def _start(self) -> list[Event]:
        self._started = True
        response = _response_object(self._id, self._created, self.model, [], None, None)
        response["status"] = "in_progress"
        return [self._emit("response.created", response=response)]

    def _add_item(self, item: Json) -> tuple[int, Event]:
        index = len(self._items)
        self._items.append(item)
        return index, self._emit("response.output_item.added", output_index=index, item=dict(item))

    def _text_delta(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._message is None:
            self._message, added = self._add_item(_message_item(_new_id("msg"), "", "in_progress"))
            part = {"type": "output_text", "text": "", "annotations": []}
            item_id = self._items[self._message]["id"]
            out += [
                added,
                self._emit(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=self._message,
                    content_index=0,
                    part=part,
                ),
            ]
        self._text.append(text)
        out.append(
            self._emit(
                "response.output_text.delta",
                item_id=self._items[self._message]["id"],
                output_index=self._message,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call_delta(self, call: Json) -> list[Event]:
        key = _call_key(call, self._last_call)
        fn = call.get("function") or {}
        out: list[Event] = []
        if key not in self._calls:
            item = _call_item(call, self.tools)
            item.update(status="in_progress", arguments="")
            added_item = dict(item)
            if item["type"] == "custom_tool_call":
                del added_item["arguments"]  # the buffer for its JSON: not the client's
            self._calls[key] = len(self._items)
            self._items.append(item)
            out.append(
                self._emit(
                    "response.output_item.added", output_index=self._calls[key], item=added_item
                )
            )
        self._last_call = key
        index = self._calls[key]
        item = self._items[index]
        if fn.get("arguments"):
            item["arguments"] += str(fn["arguments"])
            if item["type"] == "custom_tool_call":
                return out  # the input is known once the JSON around it is whole
            out.append(
                self._emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=str(fn["arguments"]),
                )
            )
        return out

    def _close_item(self, index: int) -> list[Event]:
        item = self._items[index]
        out: list[Event] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(self._emit("response.output_text.done", text=text, logprobs=[], **where))
            out.append(self._emit("response.content_part.done", part=part, **where))
            item["content"] = [part]
        elif item["type"] == "custom_tool_call":
            text = item["input"] = _custom_input(item.pop("arguments"))
            where = {"item_id": item["id"], "output_index": index}
            if text:
                out.append(self._emit("response.custom_tool_call_input.delta", delta=text, **where))
            out.append(self._emit("response.custom_tool_call_input.done", input=text, **where))
        else:
            item["arguments"] = item["arguments"] or "{}"  # clients parse it as JSON
            out.append(
                self._emit(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        item["status"] = "completed"
        out.append(self._emit("response.output_item.done", output_index=index, item=item))
        return out

    def _close(self) -> list[Event]:
        self._closed = True
        out = [e for index in range(len(self._items)) for e in self._close_item(index)]
        usage = self.usage if self._saw_usage else None  # unknown, not zero
        response = _response_object(
            self._id, self._created, self.model, self._items, usage, self._finish_reason
        )
        out.append(self._emit("response.completed", response=response))
        return out


class AnthropicStreamToResponses:
    """Anthropic Messages stream events in, Responses stream events out.

    Goes through Chat Completions chunks, so both legs share one tested path;
    `usage` is the exact Anthropic count, cache writes included.
    """

    def __init__(self, model: str, tools: ResponsesTools | None = None) -> None:
        self._chat = AnthropicStreamToOpenAI(model, include_usage=True)
        self._responses = ChatStreamToResponses(model, tools)

    @property
    def usage(self) -> Usage:
        return self._chat.usage

    @property
    def complete(self) -> bool:
        return self._chat.complete

    @property
    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return self._responses.ended

    def feed(self, event: str, data: Json) -> list[Event]:
        return [e for chunk in self._chat.feed(event, data) for e in self._responses.feed(chunk)]

    def finish(self) -> list[Event]:
        out = [e for chunk in self._chat.finish() for e in self._responses.feed(chunk)]
        return out + self._responses.finish()
