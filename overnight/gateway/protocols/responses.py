"""OpenAI Responses (`POST /v1/responses`), as the gateway serves and speaks it.

Owns what is the Responses API's own on the wire: the endpoint, its typed events
with their `sequence_number`s (the end at `response.completed` or
`response.incomplete`, a failure as `response.failed`, which is also the explicit
error the gateway ends a broken stream with), which upstreams speak it
(`responses_api`), and which of its converters (`translate.responses`) take
Chat Completions to it, with the client's tools so a call comes back as
declared. Nothing is translated into it: an upstream that speaks Responses
speaks Chat Completions too, which other clients get.
Knows nothing about routing, budgets or the other protocols.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from overnight.gateway.codec import sse
from overnight.gateway.protocols.base import (
    ErrorKind,
    Json,
    StreamFacts,
    StreamWatch,
    Tokens,
    tokens_of,
)
from overnight.gateway.protocols.openai import ERRORS, OpenAIProtocol
from overnight.gateway.translate.responses import (
    ChatStreamToResponses,
    chat_to_responses_response,
    responses_to_chat_request,
    responses_tools,
)
from overnight.gateway.translate.usage import usage_from_responses
from overnight.gateway.translate.vendor_state import strip_responses

if TYPE_CHECKING:
    from overnight.gateway.protocols.registry import Register
    from overnight.org.gateway import UpstreamConfig


def tokens_from_responses(usage: Json) -> Tokens:
    return tokens_of(usage_from_responses(usage))


class ResponsesWatch(StreamWatch):
    """Typed events: `response.created` (id, model), `*.delta`, the end at
    `response.completed` / `response.incomplete` (with usage), `response.failed`, `error`."""

    def _follow(self, name: str | None, obj: Json) -> bool:
        kind = obj.get("type")
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self.facts.sequence = seq
        if isinstance(kind, str) and kind.endswith(".delta"):
            delta = obj.get("delta")
            if isinstance(delta, str):
                self.chars += len(delta)
        elif kind in ("response.created", "response.in_progress"):
            response = obj.get("response") or {}
            self.facts.response_id = response.get("id")
            self.facts.model = response.get("model")
        elif kind in ("response.completed", "response.incomplete"):
            response = obj.get("response") or {}
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
            self.done = True
        elif kind == "response.failed":
            response = obj.get("response") or {}
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
            err = response.get("error") or {}
            self.error = str(err.get("message") or "upstream response failed")
        elif kind == "error":
            self.error = str(obj.get("message") or "upstream error")
        return True


class Responses(OpenAIProtocol):
    name = "responses"
    path = "/v1/responses"

    def serves(self, upstream: UpstreamConfig) -> bool:
        return upstream.protocol == self.vendor and upstream.responses_api

    def stream_error(self, kind: ErrorKind, message: str, facts: StreamFacts) -> bytes:
        _, code = ERRORS[kind]
        response = {
            "id": facts.response_id or f"resp_overnight_{int(time.time() * 1000)}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "failed",
            "error": {"code": code or "server_error", "message": message},
            "incomplete_details": None,
            "model": facts.model or "",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        return sse(
            {
                "type": "response.failed",
                "sequence_number": facts.sequence + 1,
                "response": response,
            },
            "response.failed",
        )

    tokens = staticmethod(tokens_from_responses)

    def watch(self, drop_usage_chunk: bool = False) -> StreamWatch:
        return ResponsesWatch(self, drop_usage_chunk)

    strip_vendor_state = staticmethod(strip_responses)

    def encode_events(self, items: list[Any], facts: StreamFacts) -> list[bytes]:
        out = []
        for name, data in items:
            seq = data.get("sequence_number")
            if isinstance(seq, int):
                facts.sequence = seq
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                facts.response_id = response["id"]
            out.append(sse(data, name))
        return out

    request_to_chat = staticmethod(responses_to_chat_request)

    def answer_from_chat(self, resp: Json, model: str, request: Json) -> Json:
        # The client's tool declarations: a call of a namespaced or freeform tool goes
        # back in the shape the client declared the tool in.
        return chat_to_responses_response(resp, model, responses_tools(request))

    def stream_from_chat(self, model: str, request: Json) -> ChatStreamToResponses:
        return ChatStreamToResponses(model, responses_tools(request))


def register_protocols(register: Register) -> None:
    register(Responses())
