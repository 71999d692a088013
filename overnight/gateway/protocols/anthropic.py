"""Anthropic Messages (`POST /v1/messages`), as the gateway serves and speaks it.

Owns what is Anthropic's own on the wire: the endpoint, `x-api-key`, the
`anthropic-version` and `anthropic-beta` headers, error bodies and the `error`
event, reading a stream's named events (usage from `message_start` and
`message_delta`, the end at `message_stop`), and which of its converters
(`translate.anthropic`) take it to and from Chat Completions.
Knows nothing about routing, budgets or the other protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overnight.gateway.codec import sse
from overnight.gateway.protocols.base import (
    ErrorKind,
    Json,
    StreamFacts,
    StreamWatch,
    Tokens,
    WireProtocol,
    tokens_of,
)
from overnight.gateway.translate.anthropic import (
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from overnight.gateway.translate.usage import usage_from_anthropic
from overnight.gateway.translate.vendor_state import strip_anthropic

_ERROR_TYPES: dict[ErrorKind, str] = {
    "invalid": "invalid_request_error",
    "auth": "authentication_error",
    "forbidden": "permission_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "budget": "billing_error",
    "overloaded": "overloaded_error",
    "api": "api_error",
}
_VERSION = "2023-06-01"
"""The `anthropic-version` an upstream gets when the client named none."""

if TYPE_CHECKING:
    from overnight.gateway.protocols.registry import Register


def tokens_from_anthropic(usage: Json) -> Tokens:
    return tokens_of(usage_from_anthropic(usage))


class AnthropicWatch(StreamWatch):
    """Named events: `message_start` (id, model, usage so far), deltas, `message_delta`
    (cumulative usage), `message_stop` (the end), `error`."""

    def _follow(self, name: str | None, obj: Json) -> bool:
        name = name or obj.get("type")
        if name == "content_block_delta":
            delta = obj.get("delta") or {}
            for key in ("text", "partial_json", "thinking"):
                value = delta.get(key)
                if isinstance(value, str):
                    self.chars += len(value)
        elif name == "message_start":
            message = obj.get("message") or {}
            self.facts.response_id = message.get("id")
            self.facts.model = message.get("model")
            if isinstance(message.get("usage"), dict):
                self.usage = dict(message["usage"])
        elif name == "message_delta":
            if isinstance(obj.get("usage"), dict):
                self.usage.update({k: v for k, v in obj["usage"].items() if v is not None})
        elif name == "message_stop":
            self.done = True
        elif name == "error":
            err = obj.get("error") or {}
            self.error = str(err.get("message") or "upstream error")
            self.error_kind = "overloaded" if err.get("type") == "overloaded_error" else "api"
        return True


class AnthropicMessages(WireProtocol):
    name = "anthropic"
    path = "/v1/messages"
    vendor = "anthropic"
    upstream_auth = "x-api-key"
    key_header = "x-api-key"
    client_headers = ("anthropic-version", "anthropic-beta")
    forwards_query = True  # Claude Code's `?beta=true`

    def error_object(self, kind: ErrorKind, message: str) -> Json:
        return {"type": "error", "error": {"type": _ERROR_TYPES[kind], "message": message}}

    def stream_error(self, kind: ErrorKind, message: str, facts: StreamFacts) -> bytes:
        return sse(self.error_object(kind, message), "error")

    def upstream_headers(
        self, headers: dict[str, str], client: WireProtocol, request: dict[str, str]
    ) -> None:
        headers["anthropic-version"] = request.get("anthropic-version", _VERSION)
        # Beta features are the vendor's own: they go on only from its own clients.
        if client.vendor == self.vendor and "anthropic-beta" in request:
            headers["anthropic-beta"] = request["anthropic-beta"]

    tokens = staticmethod(tokens_from_anthropic)

    def watch(self, drop_usage_chunk: bool = False) -> StreamWatch:
        return AnthropicWatch(self, drop_usage_chunk)

    strip_vendor_state = staticmethod(strip_anthropic)

    def encode_events(self, items: list[Any], facts: StreamFacts) -> list[bytes]:
        return [sse(data, name) for name, data in items]

    request_to_chat = staticmethod(anthropic_to_openai_request)
    request_from_chat = staticmethod(openai_to_anthropic_request)
    answer_to_chat = staticmethod(anthropic_to_openai_response)

    def answer_from_chat(self, resp: Json, model: str, request: Json) -> Json:
        return openai_to_anthropic_response(resp, model)

    def stream_to_chat(self, model: str, include_usage: bool) -> AnthropicStreamToOpenAI:
        return AnthropicStreamToOpenAI(model, include_usage)

    def stream_from_chat(self, model: str, request: Json) -> OpenAIStreamToAnthropic:
        return OpenAIStreamToAnthropic(model)


def register_protocols(register: Register) -> None:
    register(AnthropicMessages())
