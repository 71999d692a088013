"""What OpenAI's two APIs (Chat Completions, Responses) share on the wire.

Owns their common part: bearer keys, the `openai-beta` header, and the error
body (`{"error": {"message", "type", "param", "code"}}`) with each error kind's
type and code. Knows nothing about either API's requests or streams (`chat.py`,
`responses.py`).
"""

from __future__ import annotations

from overnight.gateway.protocols.base import ErrorKind, Json, WireProtocol

ERRORS: dict[ErrorKind, tuple[str, str | None]] = {
    "invalid": ("invalid_request_error", None),
    "auth": ("invalid_request_error", "invalid_api_key"),
    "forbidden": ("invalid_request_error", "policy_denied"),
    "not_found": ("invalid_request_error", "model_not_found"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("requests", "rate_limit_exceeded"),
    "budget": ("insufficient_quota", "insufficient_quota"),
    "overloaded": ("server_error", "overloaded"),
    "api": ("server_error", None),
}
"""Each error kind's (type, code) in OpenAI's error body."""


class OpenAIProtocol(WireProtocol):
    """The base of OpenAI's APIs: served by `protocol = "openai"` upstreams."""

    vendor = "openai"
    upstream_auth = "bearer"
    key_header = "authorization"
    client_headers = ("openai-beta",)

    def error_object(self, kind: ErrorKind, message: str) -> Json:
        kind_type, code = ERRORS[kind]
        return {"error": {"message": message, "type": kind_type, "param": None, "code": code}}

    def upstream_headers(
        self, headers: dict[str, str], client: WireProtocol, request: dict[str, str]
    ) -> None:
        # Beta features are the vendor's own: they go on only from its own clients.
        if client.vendor == self.vendor and "openai-beta" in request:
            headers["openai-beta"] = request["openai-beta"]
