"""OpenAI Chat Completions (`POST /v1/chat/completions`), as the gateway serves and speaks it.

Owns what is Chat Completions' own on the wire: the endpoint, its data-only
stream of chunks ended by `data: [DONE]` (or, from servers that omit it, by a
finish reason and the usage chunk), `stream_options.include_usage` (asked of the
upstream when the client did not, so every stream can be metered), and its place
as the hub every other protocol converts to and from: its own conversions are
none at all. Knows nothing about routing, budgets or the other protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overnight.gateway.codec import Event, dumps, sse
from overnight.gateway.protocols.base import (
    ErrorKind,
    Json,
    StreamFacts,
    StreamWatch,
    Tokens,
    tokens_of,
)
from overnight.gateway.protocols.openai import OpenAIProtocol
from overnight.gateway.translate.usage import usage_from_openai
from overnight.gateway.translate.vendor_state import strip_chat

if TYPE_CHECKING:
    from overnight.gateway.protocols.registry import Register


def tokens_from_chat(usage: Json) -> Tokens:
    return tokens_of(usage_from_openai(usage))


class ChatWatch(StreamWatch):
    """Data-only chunks; the end is `[DONE]`, or a finish reason and its usage."""

    finished = False
    """A choice's finish_reason was seen."""

    def see(self, event: Event) -> tuple[Any, bool]:
        data = event.data
        if data is not None and data.strip() == "[DONE]":
            self.done = True
            return None, True
        return StreamWatch.see(self, event)

    def _follow(self, name: str | None, obj: Json) -> bool:
        if obj.get("error"):
            err = obj["error"]
            self.error = str(err.get("message") if isinstance(err, dict) else err)
            return True
        choices = obj.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                self.chars += len(content)
            for call in delta.get("tool_calls") or []:
                args = (call.get("function") or {}).get("arguments")
                if isinstance(args, str):
                    self.chars += len(args)
            if choice.get("finish_reason"):
                self.finished = True
        if self.facts.response_id is None:
            self.facts.response_id = obj.get("id")
            self.facts.model = obj.get("model")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            return not (self._drop_usage_chunk and not choices)
        return True

    @property
    def complete(self) -> bool:
        return self.done or (self.finished and bool(self.usage))


class ChatCompletions(OpenAIProtocol):
    name = "chat"
    path = "/v1/chat/completions"
    hub = True
    stream_end = b"data: [DONE]\n\n"

    def stream_error(self, kind: ErrorKind, message: str, facts: StreamFacts) -> bytes:
        # No [DONE] after it: the stream did not complete.
        return sse(self.error_object(kind, message))

    tokens = staticmethod(tokens_from_chat)

    def watch(self, drop_usage_chunk: bool = False) -> StreamWatch:
        return ChatWatch(self, drop_usage_chunk)

    strip_vendor_state = staticmethod(strip_chat)

    def injects_usage(self, request: Json) -> bool:
        options = request.get("stream_options")
        return not (isinstance(options, dict) and options.get("include_usage") is True)

    def wants_usage_chunk(self, request: Json) -> bool:
        options = request.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def encode_events(self, items: list[Any], facts: StreamFacts) -> list[bytes]:
        return [b"data: %b\n\n" % dumps(chunk) for chunk in items]  # sse(), inlined

    def request_to_chat(self, body: Json, model: str) -> Json:
        return body

    def request_from_chat(self, body: Json, model: str) -> Json:
        return body

    def answer_to_chat(self, resp: Json, model: str) -> Json:
        return resp

    def answer_from_chat(self, resp: Json, model: str, request: Json) -> Json:
        return resp

    def stream_to_chat(self, model: str, include_usage: bool) -> None:
        return None

    def stream_from_chat(self, model: str, request: Json) -> None:
        return None


def register_protocols(register: Register) -> None:
    register(ChatCompletions())
