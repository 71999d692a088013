"""The gateway's side of ASGI: the types, reading a request, sending a reply.

Owns the ASGI aliases every module of the gateway uses, which request headers are
decoded at all, the key a request presents, reading a body up to a limit, and a
whole reply in two messages. Knows nothing about what a request asks for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BAD_KEY = (
    "missing or unknown gateway key: send the agent's overnight key as x-api-key "
    "or Authorization: Bearer"
)

_READ = ("x-api-key", "authorization", "x-overnight-trial", "traceparent", "tracestate")
"""Headers the gateway reads of every request; the protocols add their own."""


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def wanted_headers(extra: Iterable[str]) -> frozenset[bytes]:
    """The request headers to decode: the gateway's own, `content-length`, and `extra`."""
    return frozenset(name.encode() for name in (*_READ, "content-length", *extra))


def request_headers(scope: Scope, wanted: frozenset[bytes]) -> dict[str, str]:
    """The request headers the gateway reads; the rest are neither decoded nor forwarded."""
    return {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}


def presented_key(headers: dict[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes | None:
    """The whole request body, or None when it is over `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def reply(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
