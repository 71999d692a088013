"""OpenAI Responses <-> Chat Completions: requests, answers and streams.

Owns how a Responses request becomes a Chat Completions one (its input items,
instructions, text format and tools), and how a Chat Completions answer and
stream become the Responses object and events a client (the Codex CLI) expects.
Responses tools another vendor has no shape for cross as plain functions and come
back as the client declared them: a namespace's tools as `namespace__name`, a
freeform (`custom`) tool as a function of one string, `input` (see
`responses_tools`). An Anthropic upstream is reached through Chat Completions
(`anthropic_to_responses_response`, `AnthropicStreamToResponses`).
Knows nothing about HTTP or upstreams; parsed JSON in, parsed JSON out.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from overnight.gateway.translate.anthropic import (
    AnthropicStreamToOpenAI,
    anthropic_to_openai_response,
)
from overnight.gateway.translate.chunks import ChatChunks, call_key, named_event
from overnight.gateway.translate.content import (
    JOIN,
    RAW_ARGUMENTS,
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
from overnight.gateway.translate.usage import Usage, responses_usage, usage_from_openai

# --------------------------------------------------------------------------- Responses -> Chat


def _responses_content(content: Any, role: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if role != "user":
        return JOIN.join(texts_of(content))
    parts: list[Json] = []
    for part in content or []:
        kind = part.get("type")
        if kind in TEXT_PARTS and part.get("text"):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and part.get("image_url"):  # file_id images stay behind
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    return simplify_parts(parts) if parts else ""


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
    description = JOIN.join(d for d in (namespace_description, tool.get("description")) if d)
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
    return output if isinstance(output, str) else JOIN.join(texts_of(output))


def _responses_input_to_chat(items: Any, system: list[str]) -> list[Json]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Json] = []
    for item in items or []:
        kind = item.get("type", "message")  # easy input messages may omit the type
        if kind == "message":
            role = item.get("role", "user")
            if role in ("system", "developer"):
                system.extend(texts_of(item.get("content")))
            else:
                content = _responses_content(item.get("content"), role)
                messages.append({"role": role, "content": content})
        elif kind == "function_call":
            name = _flat_name(item.get("name"), item.get("namespace"))
            call_id = item.get("call_id") or item.get("id")
            _add_tool_call(messages, call_id, name, item.get("arguments") or "{}")
        elif kind == "custom_tool_call":
            name = _flat_name(item.get("name"), item.get("namespace"))
            arguments = dump_arguments({_CUSTOM_INPUT: str(item.get("input") or "")})
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
    system = texts_of(body.get("instructions"))
    messages = _responses_input_to_chat(body.get("input"), system)
    if system:
        messages.insert(0, {"role": "system", "content": JOIN.join(system)})
    out: Json = {"model": model, "messages": messages}
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    copy_sampling(body, out)
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


# --------------------------------------------------------------------------- answers


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
    value = parse_arguments(arguments)
    for key in (_CUSTOM_INPUT, RAW_ARGUMENTS):  # a model may write the text bare
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
        "id": new_id("ctc" if tool.custom else "fc"),
        "type": "custom_tool_call" if tool.custom else "function_call",
        "status": "completed",
        "call_id": call.get("id") or new_id("call"),
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
        "usage": responses_usage(usage) if usage is not None else None,
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
    choice = first_choice(resp)
    message = choice.get("message") or {}
    output = []
    text = JOIN.join(texts_of(message.get("content")))
    if text:
        output.append(_message_item(new_id("msg"), text))
    output.extend(_call_item(call, tools) for call in message.get("tool_calls") or [])
    usage = usage_from_openai(resp["usage"]) if resp.get("usage") else None
    created = int(resp.get("created") or time.time())
    return _response_object(
        new_id("resp"), created, model, output, usage, choice.get("finish_reason")
    )


def anthropic_to_responses_response(
    resp: Json, model: str, tools: ResponsesTools | None = None
) -> Json:
    """An Anthropic message as the Responses object a client expects (`tools`: as above)."""
    return chat_to_responses_response(anthropic_to_openai_response(resp, model), model, tools)


# --------------------------------------------------------------------------- streams


class ChatStreamToResponses(ChatChunks):
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
        super().__init__()
        self.model = model
        self.tools = tools or {}
        self._id = new_id("resp")
        self._created = int(time.time())
        self._seq = 0
        self._items: list[Json] = []  # output items, by output_index
        self._message: int | None = None  # output_index of the one message item
        self._pieces: list[str] = []  # the message's text so far
        self._calls: dict[Any, int] = {}  # upstream tool-call key -> output_index
        self._last_call: Any = None

    def _emit(self, name: str, **fields: Any) -> Event:
        event = named_event(name, sequence_number=self._seq, **fields)
        self._seq += 1
        return event

    def _start(self, chunk: Json) -> list[Event]:
        self._started = True
        response = _response_object(self._id, self._created, self.model, [], None, None)
        response["status"] = "in_progress"
        return [self._emit("response.created", response=response)]

    def _add_item(self, item: Json) -> tuple[int, Event]:
        index = len(self._items)
        self._items.append(item)
        return index, self._emit("response.output_item.added", output_index=index, item=dict(item))

    def _text(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._message is None:
            self._message, added = self._add_item(_message_item(new_id("msg"), "", "in_progress"))
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
        self._pieces.append(text)
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

    def _tool_call(self, call: Json) -> list[Event]:
        key = call_key(call, self._last_call)
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
            text = "".join(self._pieces)
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
