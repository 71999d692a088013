"""Anthropic Messages <-> Chat Completions: requests, answers and streams.

Owns how an Anthropic request becomes a Chat Completions one and back, how each
side's answer and stream become the other's, and the shapes only this pair
maps: images, tool declarations and choices, tool results (and their error
flag), stop reasons. Chat Completions is the gateway's common language: a
Responses client reaches an Anthropic upstream through it (`responses.py`).
Knows nothing about HTTP or upstreams; parsed JSON in, parsed JSON out.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from overnight.gateway.translate.chunks import (
    ChatChunks,
    UpstreamStreamError,
    call_key,
    named_event,
)
from overnight.gateway.translate.content import (
    JOIN,
    TEXT_PARTS,
    Event,
    Json,
    copy_sampling,
    dump_arguments,
    first_choice,
    new_id,
    parse_arguments,
    simplify_parts,
    texts_of,
)
from overnight.gateway.translate.usage import (
    Usage,
    anthropic_usage,
    merge_anthropic_usage,
    openai_usage,
    usage_from_anthropic,
    usage_from_openai,
)

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; OpenAI and Responses clients may omit it."""


# OpenAI tool messages have no `is_error`; this prefix carries it there and back.
_ERROR_MARK = "[tool error] "

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


def _anthropic_stop(finish_reason: Any, has_tool_calls: bool) -> str:
    # Some servers (Ollama, llama.cpp) say "stop" after a tool call.
    if finish_reason == "length":
        return "max_tokens"
    if has_tool_calls:
        return "tool_use"
    return _STOP_TO_ANTHROPIC.get(str(finish_reason), "end_turn")


def _openai_finish(stop_reason: Any) -> str:
    return _STOP_TO_OPENAI.get(str(stop_reason), "stop")


def _tool_id(raw: Any) -> str:
    """Anthropic accepts only [A-Za-z0-9_-] in tool ids; some OpenAI servers send others."""
    if not raw:
        return new_id("toolu")
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(raw))


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
    text = JOIN.join(texts_of(content))
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
        messages.append({"role": "user", "content": simplify_parts(parts)})
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
            function = {"name": block.get("name"), "arguments": dump_arguments(block.get("input"))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: Json = {"role": "assistant", "content": JOIN.join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""  # OpenAI wants content when there are no tool calls
    return message


def _anthropic_messages_to_openai(body: Json) -> list[Json]:
    system = texts_of(body.get("system"))
    messages: list[Json] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        if role == "system":  # Claude Code sends these inside `messages`
            system.extend(texts_of(message.get("content")))
        elif role == "assistant":
            messages.append(_anthropic_assistant_to_openai(message.get("content")))
        else:
            messages.extend(_anthropic_user_to_openai(message.get("content")))
    if system:
        # One leading system message: local chat templates reject system turns elsewhere.
        messages.insert(0, {"role": "system", "content": JOIN.join(system)})
    return messages


def anthropic_to_openai_request(body: Json, model: str) -> Json:
    """An Anthropic Messages request as a Chat Completions request for `model`."""
    out: Json = {"model": model, "messages": _anthropic_messages_to_openai(body)}
    if body.get("max_tokens") is not None:
        # The current spec's name; OpenAI reasoning models reject `max_tokens`.
        out["max_completion_tokens"] = body["max_tokens"]
    copy_sampling(body, out)
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
        if kind in TEXT_PARTS and part.get("text"):
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
        "input": parse_arguments(fn.get("arguments")),
    }


def _openai_assistant_blocks(message: Json) -> list[Json]:
    blocks: list[Json] = [{"type": "text", "text": t} for t in texts_of(message.get("content"))]
    blocks.extend(_tool_use_block(call) for call in message.get("tool_calls") or [])
    return blocks


def _openai_tool_result(message: Json) -> Json:
    text = JOIN.join(texts_of(message.get("content")))
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
            system.extend(texts_of(message.get("content")))
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
    copy_sampling(body, out)
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


# --------------------------------------------------------------------------- answers


def openai_to_anthropic_response(resp: Json, model: str) -> Json:
    """A Chat Completions response as the Anthropic message a client expects."""
    choice = first_choice(resp)
    message = choice.get("message") or {}
    texts = texts_of(message.get("content"))
    calls = message.get("tool_calls") or []
    content = [{"type": "text", "text": JOIN.join(texts)}] if texts else []
    content += [_tool_use_block(call) for call in calls]
    return {
        "id": f"msg_{resp.get('id') or uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop(choice.get("finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": anthropic_usage(usage_from_openai(resp.get("usage") or {})),
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
        "usage": openai_usage(usage_from_anthropic(resp.get("usage") or {})),
    }


# --------------------------------------------------------------------------- streams


class OpenAIStreamToAnthropic(ChatChunks):
    """chat.completion.chunk dicts in, Anthropic Messages stream events out.

    The closing events wait for the usage chunk that follows `finish_reason`
    when the request asked for it (`stream_options.include_usage`), or for
    `finish()`. `complete` says whether the upstream ended its reply properly.
    """

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self._blocks = 0
        self._open: tuple[int, str] | None = None  # (index, "text" | "tool_use")
        self._tools: dict[Any, int] = {}  # upstream tool-call key -> block index
        self._last_tool: Any = None

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
        return [named_event("message_start", message=message)]

    def _open_block(self, kind: str, block: Json) -> list[Event]:
        out = self._close_block()
        index = self._blocks
        self._blocks += 1
        self._open = (index, kind)
        return [*out, named_event("content_block_start", index=index, content_block=block)]

    def _close_block(self) -> list[Event]:
        if self._open is None:
            return []
        index, _ = self._open
        self._open = None
        return [named_event("content_block_stop", index=index)]

    def _text(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._open is None or self._open[1] != "text":
            out += self._open_block("text", {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        return [*out, named_event("content_block_delta", index=self._open[0], delta=delta)]

    def _tool_call(self, call: Json) -> list[Event]:
        key = call_key(call, self._last_tool)
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
            out.append(named_event("content_block_delta", index=self._tools[key], delta=delta))
        return out

    def _finished(self) -> list[Event]:
        return self._close_block()

    def _close(self) -> list[Event]:
        self._closed = True
        stop = _anthropic_stop(self._finish_reason, bool(self._tools))
        delta = {"stop_reason": stop, "stop_sequence": None}
        return [
            *self._close_block(),
            named_event("message_delta", delta=delta, usage=anthropic_usage(self.usage)),
            named_event("message_stop"),
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
            out.append({**self._chunk({}), "choices": [], "usage": openai_usage(self.usage)})
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
            # The non-streaming translation joins text blocks with JOIN; so must this.
            self._join_next = self._wrote_text
            return self._text(str(block.get("text") or ""))
        if kind != "tool_use":
            return []
        position = len(self._tools)
        self._tools[index] = position
        arguments = dump_arguments(block["input"]) if block.get("input") else ""
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
            text = JOIN + text
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
        self.usage = merge_anthropic_usage(self.usage, data.get("usage") or {})
        stop = (data.get("delta") or {}).get("stop_reason")
        if not stop or self._sent_finish:
            return []
        self.complete = True
        self._sent_finish = True
        return [self._chunk({}, _openai_finish(stop))]
