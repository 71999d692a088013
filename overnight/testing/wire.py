"""The providers' wire formats, as the fake provider speaks them.

Owns the JSON and server-sent-event bytes of Anthropic Messages, OpenAI Chat
Completions and OpenAI Responses for one reply (streamed and not), each vendor's
error bodies, model lists and credential headers, and where each API keeps its
tool results. Field names and event order follow the official SDKs' types
(anthropic 2.x, openai 3.x) and what Claude Code and Codex consume.

Knows nothing about sockets, faults or which reply comes next: the fake
provider picks a `Reply`, `make_turn` makes it concrete for one request, and a
`Dialect` renders it. Each dialect is one of the gateway's wire protocol objects
(`overnight.gateway.protocols`), which name its endpoint and vendor, so the fake
serves what the gateway speaks; everything it sends it renders itself, so the
gateway is tested against a reading of the formats that is not its own.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from overnight.gateway import protocols
from overnight.gateway.protocols import WireProtocol
from overnight.testing.replies import Reply, StopReason, estimate_tokens, output_text

# Ids need to be unique, not secret: no system call (os.urandom) per id.
_random_bits = random.Random().getrandbits


def new_id(prefix: str) -> str:
    return f"{prefix}{_random_bits(96):024x}"


def dumps(data: Any) -> bytes:
    """Compact JSON, UTF-8 unescaped, as the providers send it. orjson: the fake's
    answers are what every gateway benchmark measures against, and the standard
    library's encoder was a third of the fake's CPU per streamed answer. Its own, not
    the gateway's `protocols.dumps`: the fake is what the gateway is tested against."""
    try:
        return orjson.dumps(data)
    except TypeError:  # what orjson refuses (an integer beyond 64 bits, a lone surrogate)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(data) + b"\n\n"


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class Counts:
    """A reply's usage with every number known (see `Usage` for what each means)."""

    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int

    @property
    def prompt_total(self) -> int:
        """Every input token, cached or not: OpenAI's `prompt_tokens` / `input_tokens`."""
        return self.input + self.cache_read + self.cache_write


@dataclass(frozen=True)
class Turn:
    """One reply made concrete for one request: ids chosen, usage counted."""

    id: str
    model: str
    text: str
    calls: tuple[Call, ...]
    counts: Counts
    stop_reason: StopReason
    created: int


def make_turn(reply: Reply, dialect: Dialect, body: Mapping[str, Any]) -> Turn:
    usage = reply.usage
    given_in = usage.input_tokens if usage else None
    given_out = usage.output_tokens if usage else None
    counts = Counts(
        input=given_in if given_in is not None else estimate_tokens(request_text(body)),
        output=given_out if given_out is not None else estimate_tokens(output_text(reply)),
        cache_read=usage.cache_read_tokens if usage else 0,
        cache_write=usage.cache_write_tokens if usage else 0,
        reasoning=usage.reasoning_tokens if usage else 0,
    )
    calls = tuple(
        Call(c.id or dialect.new_call_id(), c.name, dict(c.arguments)) for c in reply.tool_calls
    )
    model = body.get("model")
    return Turn(
        id=dialect.new_message_id(),
        model=model if isinstance(model, str) else "fake-model",
        text=reply.text,
        calls=calls,
        counts=counts,
        stop_reason=reply.final_stop_reason,
        created=int(time.time()),
    )


_TEXT_KEYS = ("system", "messages", "input", "instructions", "tools", "prompt")


def request_text(body: Mapping[str, Any]) -> str:
    """All the text a model would read from a request, for the input-token estimate."""
    out: list[str] = []
    # A stack, not a recursive inner function: that one is a reference cycle per request,
    # which hands the fake's garbage to the collector and its pauses to every client.
    stack: list[Any] = [body.get(key) for key in reversed(_TEXT_KEYS)]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            stack.extend(reversed(value.values()))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return "".join(out)


def text_pieces(text: str) -> list[str]:
    """Word-sized deltas (each word keeps its trailing space), as models stream them."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text)):
        if text[i - 1].isspace() and not text[i].isspace():
            pieces.append(text[start:i])
            start = i
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def json_pieces(text: str, parts: int = 3) -> list[str]:
    """Tool arguments cut into a few pieces at arbitrary points, as the APIs stream them."""
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# --- APIs ------------------------------------------------------------------------------


class Dialect:
    """One API of one vendor: the JSON shapes of the wire protocol it renders."""

    protocol: ClassVar[WireProtocol]

    @property
    def path(self) -> str:
        return self.protocol.path

    def new_message_id(self) -> str:
        raise NotImplementedError

    def new_call_id(self) -> str:
        raise NotImplementedError

    def tool_results(self, body: Mapping[str, Any]) -> int:
        """How many tool results the conversation in this request already holds."""
        raise NotImplementedError

    def message(self, turn: Turn, body: Mapping[str, Any]) -> dict[str, Any]:
        """The non-streaming response body."""
        raise NotImplementedError

    def events(self, turn: Turn, body: Mapping[str, Any]) -> list[bytes]:
        """The streaming response body, one SSE event per item."""
        raise NotImplementedError

    def garbage_event(self) -> bytes:
        """An event whose data is not JSON, framed so the SDK does try to parse it."""
        raise NotImplementedError

    def error_event(self, turn: Turn, sequence: int) -> bytes:
        """The provider's own in-stream error, as sent when it fails mid-answer."""
        raise NotImplementedError


class AnthropicMessages(Dialect):
    protocol = protocols.get("anthropic")

    def new_message_id(self) -> str:
        return new_id("msg_")

    def new_call_id(self) -> str:
        return new_id("toolu_")

    def tool_results(self, body: Mapping[str, Any]) -> int:
        return sum(
            1
            for message in _list(body.get("messages"))
            if isinstance(message, dict)
            for block in _list(message.get("content"))
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )

    def usage(self, c: Counts, output: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": c.input,
            "cache_creation_input_tokens": c.cache_write,
            "cache_read_input_tokens": c.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": c.cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output,
            "service_tier": "standard",
        }
        if c.reasoning:
            usage["output_tokens_details"] = {"thinking_tokens": min(c.reasoning, output)}
        return usage

    def blocks(self, turn: Turn) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in turn.calls
        ]
        return blocks

    def message(self, turn: Turn, body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": turn.id,
            "type": "message",
            "role": "assistant",
            "model": turn.model,
            "content": self.blocks(turn),
            "stop_reason": turn.stop_reason,
            "stop_sequence": None,
            "usage": self.usage(turn.counts, turn.counts.output),
        }

    def events(self, turn: Turn, body: Mapping[str, Any]) -> list[bytes]:
        start = self.message(turn, body) | {"content": [], "stop_reason": None}
        # The real API reports a token or so of output at the start and the
        # cumulative total in message_delta: a client that adds them up is wrong.
        start["usage"] = self.usage(turn.counts, min(1, turn.counts.output))
        out = [sse({"type": "message_start", "message": start}, "message_start")]
        for index, block in enumerate(self.blocks(turn)):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in text_pieces(block["text"])]
            else:
                first = block | {"input": {}}
                arguments = json.dumps(block["input"], ensure_ascii=False)
                deltas = [
                    {"type": "input_json_delta", "partial_json": p} for p in json_pieces(arguments)
                ]
            out.append(
                sse(
                    {"type": "content_block_start", "index": index, "content_block": first},
                    "content_block_start",
                )
            )
            out += [
                sse(
                    {"type": "content_block_delta", "index": index, "delta": d},
                    "content_block_delta",
                )
                for d in deltas
            ]
            out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        final_usage = self.usage(turn.counts, turn.counts.output)
        del final_usage["cache_creation"], final_usage["service_tier"]
        out.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
                    "usage": final_usage,
                },
                "message_delta",
            )
        )
        out.append(sse({"type": "message_stop"}, "message_stop"))
        return out

    def garbage_event(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", <not json>\n\n'

    def error_event(self, turn: Turn, sequence: int) -> bytes:
        return sse(
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": new_id("req_"),
            },
            "error",
        )


_FINISH_REASONS: dict[StopReason, str] = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


class OpenAIChat(Dialect):
    protocol = protocols.get("chat")

    def new_message_id(self) -> str:
        return new_id("chatcmpl-")

    def new_call_id(self) -> str:
        return new_id("call_")

    def tool_results(self, body: Mapping[str, Any]) -> int:
        return sum(
            1
            for message in _list(body.get("messages"))
            if isinstance(message, dict) and message.get("role") in ("tool", "function")
        )

    def usage(self, c: Counts) -> dict[str, Any]:
        prompt_details: dict[str, int] = {"cached_tokens": c.cache_read, "audio_tokens": 0}
        if c.cache_write:
            prompt_details["cache_write_tokens"] = c.cache_write
        return {
            "prompt_tokens": c.prompt_total,
            "completion_tokens": c.output,
            "total_tokens": c.prompt_total + c.output,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {
                "reasoning_tokens": c.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _tool_calls(self, turn: Turn) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in turn.calls
        ]

    def message(self, turn: Turn, body: Mapping[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": turn.text or None,
            "refusal": None,
            "annotations": [],
        }
        if turn.calls:
            message["tool_calls"] = self._tool_calls(turn)
        return {
            "id": turn.id,
            "object": "chat.completion",
            "created": turn.created,
            "model": turn.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _FINISH_REASONS[turn.stop_reason],
                }
            ],
            "usage": self.usage(turn.counts),
            "service_tier": "default",
            "system_fingerprint": None,
        }

    def events(self, turn: Turn, body: Mapping[str, Any]) -> list[bytes]:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base: dict[str, Any] = {
            "id": turn.id,
            "object": "chat.completion.chunk",
            "created": turn.created,
            "model": turn.model,
            "service_tier": "default",
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse(base | {"choices": [choice]})

        out = [chunk({"role": "assistant", "content": "", "refusal": None})]
        out += [chunk({"content": p}) for p in text_pieces(turn.text)]
        for index, call in enumerate(turn.calls):
            head = {"index": index, "id": call.id, "type": "function"}
            out.append(
                chunk({"tool_calls": [head | {"function": {"name": call.name, "arguments": ""}}]})
            )
            out += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                for p in json_pieces(call.arguments_json)
            ]
        out.append(chunk({}, _FINISH_REASONS[turn.stop_reason]))
        if include_usage:
            out.append(sse(base | {"choices": [], "usage": self.usage(turn.counts)}))
        out.append(b"data: [DONE]\n\n")
        return out

    def garbage_event(self) -> bytes:
        return b'data: {"id": "chatcmpl-fake", "object": <not json>\n\n'

    def error_event(self, turn: Turn, sequence: int) -> bytes:
        return sse(
            {
                "error": {
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )


class OpenAIResponses(Dialect):
    protocol = protocols.get("responses")

    def new_message_id(self) -> str:
        return new_id("resp_")

    def new_call_id(self) -> str:
        return new_id("call_")

    def tool_results(self, body: Mapping[str, Any]) -> int:
        return sum(
            1
            for item in _list(body.get("input"))
            if isinstance(item, dict)
            and item.get("type") in ("function_call_output", "custom_tool_call_output")
        )

    def usage(self, c: Counts) -> dict[str, Any]:
        return {
            "input_tokens": c.prompt_total,
            "input_tokens_details": {
                "cached_tokens": c.cache_read,
                "cache_write_tokens": c.cache_write,
            },
            "output_tokens": c.output,
            "output_tokens_details": {"reasoning_tokens": c.reasoning},
            "total_tokens": c.prompt_total + c.output,
        }

    def _items(self, turn: Turn) -> Iterator[dict[str, Any]]:
        """Output items, complete; ids are derived from the turn so that the stream
        and its final `response.completed` agree."""
        if turn.text:
            yield {
                "id": "msg_" + turn.id.removeprefix("resp_"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []}
                ],
            }
        for i, call in enumerate(turn.calls):
            yield {
                "id": f"fc_{i}_" + turn.id.removeprefix("resp_"),
                "type": "function_call",
                "status": "completed",
                "arguments": call.arguments_json,
                "call_id": call.id,
                "name": call.name,
            }

    def _response(
        self, turn: Turn, body: Mapping[str, Any], status: str, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        done = status != "in_progress"
        incomplete = status == "incomplete"
        return {
            "id": turn.id,
            "object": "response",
            "created_at": turn.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": turn.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self.usage(turn.counts) if done else None,
            "user": None,
            "metadata": {},
        }

    def _final_status(self, turn: Turn) -> str:
        return "incomplete" if turn.stop_reason == "max_tokens" else "completed"

    def message(self, turn: Turn, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._response(turn, body, self._final_status(turn), list(self._items(turn)))

    def events(self, turn: Turn, body: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []

        def emit(kind: str, **fields: Any) -> None:
            out.append(sse({"type": kind, "sequence_number": len(out), **fields}, kind))

        in_progress = self._response(turn, body, "in_progress", [])
        emit("response.created", response=in_progress)
        emit("response.in_progress", response=in_progress)
        items = list(self._items(turn))
        for index, item in enumerate(items):
            at = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                emit(
                    "response.output_item.added",
                    output_index=index,
                    item=item | {"status": "in_progress", "content": []},
                )
                empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                emit("response.content_part.added", **at, content_index=0, part=empty_part)
                for piece in text_pieces(turn.text):
                    emit(
                        "response.output_text.delta",
                        **at,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
                emit(
                    "response.output_text.done", **at, content_index=0, text=turn.text, logprobs=[]
                )
                emit("response.content_part.done", **at, content_index=0, part=item["content"][0])
            else:
                emit(
                    "response.output_item.added",
                    output_index=index,
                    item=item | {"status": "in_progress", "arguments": ""},
                )
                for piece in json_pieces(item["arguments"]):
                    emit("response.function_call_arguments.delta", **at, delta=piece)
                emit("response.function_call_arguments.done", **at, arguments=item["arguments"])
            emit("response.output_item.done", output_index=index, item=item)
        status = self._final_status(turn)
        emit(f"response.{status}", response=self._response(turn, body, status, items))
        return out

    def garbage_event(self) -> bytes:
        return b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", <not json>\n\n'

    def error_event(self, turn: Turn, sequence: int) -> bytes:
        failed = self._response(turn, {}, "failed", [])
        failed["error"] = {
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
        }
        return sse(
            {"type": "response.failed", "sequence_number": sequence, "response": failed},
            "response.failed",
        )


DIALECTS: tuple[Dialect, ...] = (AnthropicMessages(), OpenAIChat(), OpenAIResponses())
"""One for each protocol of the gateway's registry."""


# --- vendors ---------------------------------------------------------------------------


class Vendor:
    """A provider: its APIs, credentials, error bodies and model list."""

    name: ClassVar[str]
    request_id_header: ClassVar[str]
    default_model: ClassVar[str]

    def __init__(self) -> None:
        self.dialects = tuple(d for d in DIALECTS if d.protocol.vendor == self.name)
        """The APIs of the gateway's protocols this vendor's upstreams speak."""

    def client_env(self, url: str) -> str:
        """How a client of this vendor's SDK is pointed at a server at `url`."""
        raise NotImplementedError

    def dialect_for(self, path: str) -> Dialect | None:
        return next((d for d in self.dialects if d.path == path), None)

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def expired_key_error(self) -> dict[str, Any]:
        raise NotImplementedError

    def wrong_key_error(self, key: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def models(self, names: list[str]) -> dict[str, Any]:
        raise NotImplementedError


_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    405: ("invalid_request_error", "Method not allowed"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class Anthropic(Vendor):
    name = "anthropic"
    request_id_header = "request-id"
    default_model = "claude-fake-1"

    def client_env(self, url: str) -> str:
        return f"ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=anything"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        # The SDK sends x-api-key; OAuth clients (Claude Code logged in) send a bearer token.
        return headers.get("x-api-key") or super().api_key(headers)

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        default = (
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "Invalid request")
        )
        kind, text = _ANTHROPIC_ERRORS.get(status, default)
        return {
            "type": "error",
            "error": {"type": kind, "message": message or text},
            "request_id": new_id("req_"),
        }

    def expired_key_error(self) -> dict[str, Any]:
        return self.error(
            401,
            "OAuth token has expired. Please obtain a new token or refresh your existing token.",
        )

    def wrong_key_error(self, key: str | None) -> dict[str, Any]:
        return self.error(401, "invalid x-api-key" if key else "x-api-key header is required")

    def models(self, names: list[str]) -> dict[str, Any]:
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
            for n in names
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }


_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "unknown_url", "Not found."),
    405: ("invalid_request_error", "method_not_allowed", "Method not allowed."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later.",
    ),
}


class OpenAI(Vendor):
    name = "openai"
    request_id_header = "x-request-id"
    default_model = "gpt-fake-1"

    def client_env(self, url: str) -> str:
        return f"OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=anything"

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        default = _OPENAI_ERRORS[500] if status >= 500 else _OPENAI_ERRORS[400]
        kind, code, text = _OPENAI_ERRORS.get(status, default)
        return {"error": {"message": message or text, "type": kind, "param": None, "code": code}}

    def expired_key_error(self) -> dict[str, Any]:
        return self.error(
            401, "Your authentication token has expired. Please try signing in again."
        )

    def wrong_key_error(self, key: str | None) -> dict[str, Any]:
        if not key:
            return self.error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "***"
        return self.error(401, f"Incorrect API key provided: {shown}.")

    def models(self, names: list[str]) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "overnight-fake"}
                for n in names
            ],
        }


VENDORS: dict[str, Vendor] = {v.name: v for v in (Anthropic(), OpenAI())}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
