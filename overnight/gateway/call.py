"""One client request on its way through the gateway, and what its attempts report.

Owns the records the dispatcher, the failover loop and the relay pass each other:
`Call` (the request, its protocol, what it has cost so far, how it ended),
`Result` (how an attempt ended, for the failover loop, and `failed`, which
also tells the router), `Meter` (what is measured of an attempt while it runs),
and `fail`, the error reply in the client's own protocol. Knows nothing about endpoints, upstreams or translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.trace import Span

from overnight.gateway.asgi import Send, reply
from overnight.gateway.meter import Reservation
from overnight.gateway.protocols import ErrorKind, Tokens, WireProtocol
from overnight.gateway.router import Candidate, Credential, Failure, Route, Router


@dataclass(slots=True)
class Call:
    """One client request on its way through the gateway."""

    request_id: str
    protocol: WireProtocol
    """What the client speaks."""
    agent: str
    trial: str | None
    alias: str
    route: Route
    stream: bool
    raw: bytes
    body: dict[str, Any]
    query: bytes
    headers: dict[str, str]
    span: Span
    reservation: Reservation | None = None
    cost: float = 0.0
    attempts: int = 0
    tokens: Tokens = field(default_factory=Tokens)
    client_gone: bool = False
    done: bool = False
    """The whole response has been sent: a disconnect after it is no cancellation."""
    status: int = 0
    error: str | None = None


@dataclass(slots=True)
class Result:
    """How an attempt ended, for the failover loop: `final` means the client has its answer."""

    final: bool
    failure: Failure | None = None
    error: str | None = None
    retry_after: float | None = None
    status: int | None = None


@dataclass(slots=True)
class Meter:
    """What is known about one attempt while it runs; becomes an `Attempt` at the end."""

    started: float
    started_at: datetime
    ttft: float | None = None
    status: int | None = None
    tokens: Tokens | None = None
    estimated: bool = False
    response_model: str | None = None


async def fail(
    call: Call,
    send: Send,
    status: int,
    kind: ErrorKind,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer `call` with an error in its client's protocol, and note it on the call."""
    call.status, call.error = status, message
    await reply(send, status, call.protocol.error_body(kind, message), extra=extra)


def failed(
    router: Router,
    cand: Candidate,
    cred: Credential,
    failure: Failure,
    error: str,
    retry_after: float | None = None,
    status: int | None = None,
) -> Result:
    """An attempt that failed before the client heard of it, told to the router: the
    next candidate may answer."""
    router.failed(cand, cred, failure, error, retry_after)
    return Result(final=False, failure=failure, error=error, retry_after=retry_after, status=status)
