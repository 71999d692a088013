"""What every wire protocol object offers the gateway, and what they all share.

Owns `WireProtocol`, the small base each protocol's class fills in (its endpoint,
key and auth headers, error bodies, usage, vendor state, stream events, and its
converters to and from Chat Completions, the common language); `StreamWatch`,
the base of a protocol's reading of an upstream stream; and what is the same for
every protocol: error kinds and statuses, the token counts metering takes.
Knows no protocol itself, nothing about routing, budgets or HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from overnight.gateway.codec import Event, loads
from overnight.gateway.translate.usage import Usage

if TYPE_CHECKING:
    from overnight.org.gateway import UpstreamConfig

Json = dict[str, Any]

ErrorKind = Literal[
    "invalid",
    "auth",
    "forbidden",
    "not_found",
    "too_large",
    "rate_limit",
    "budget",
    "overloaded",
    "api",
]
"""What went wrong, in the gateway's words; each protocol has its own for each."""


def kind_for_status(status: int) -> ErrorKind:
    if status == 401 or status == 403:
        return "auth"
    if status == 404:
        return "not_found"
    if status == 413:
        return "too_large"
    if status == 429:
        return "rate_limit"
    if status == 402:
        return "budget"
    if status in (503, 529):
        return "overloaded"
    return "invalid" if 400 <= status < 500 else "api"


def error_message(body: bytes) -> str:
    """The message inside an upstream's error body, in either vendor's shape."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return body[:300].decode("utf-8", "replace")


@dataclass
class StreamFacts:
    """What the gateway knows about a stream it is relaying, for its error event."""

    response_id: str | None = None
    model: str | None = None
    sequence: int = 0


@dataclass(slots=True)
class Tokens:
    """Input billed at full rate (no cache), cache reads, cache writes, output, reasoning."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0

    @property
    def total_input(self) -> int:
        return self.input + self.cache_read + self.cache_write


def tokens_of(usage: Usage) -> Tokens:
    """Metering's counts from a usage record (one reading of each wire format's usage,
    shared with what translated answers show clients, so the two never disagree)."""
    return Tokens(
        input=usage.input_tokens,
        output=usage.output_tokens,
        cache_read=usage.cache_read_tokens,
        cache_write=usage.cache_write_tokens,
        reasoning=usage.reasoning_tokens,
    )


class Malformed(Exception):
    """An upstream event whose data is not JSON."""


class StreamWatch:
    """Follows an upstream stream of one wire protocol, event by event.

    `see` parses each event's data (so a malformed one is caught before it is
    relayed) and returns it, or raises `Malformed`; after it, `done` tells
    whether the stream reached its end marker, `complete` whether it ended
    normally, `error` holds an in-band error, `usage` what it reported so far,
    and `chars` how much it generated (for an estimate when the stream dies
    before reporting usage). A protocol's subclass reads its events in `_follow`.
    """

    def __init__(self, protocol: WireProtocol, drop_usage_chunk: bool = False) -> None:
        self.protocol = protocol
        self.done = False
        self.error: str | None = None
        self.error_kind: ErrorKind = "api"
        self.usage: dict[str, Any] = {}
        self.chars = 0
        self.facts = StreamFacts()
        self._drop_usage_chunk = drop_usage_chunk

    def tokens(self) -> Tokens | None:
        return self.protocol.tokens(self.usage) if self.usage else None

    def see(self, event: Event) -> tuple[Any, bool]:
        """(parsed data, whether to relay the event)."""
        data = event.data
        if data is None:
            return None, True
        try:
            obj = loads(data)
        except ValueError:
            raise Malformed(f"upstream sent an event that is not JSON: {data[:120]!r}") from None
        if not isinstance(obj, dict):
            raise Malformed(f"upstream sent an event that is not a JSON object: {data[:120]!r}")
        return obj, self._follow(event.name, obj)

    def _follow(self, name: str | None, obj: Json) -> bool:
        """Take in one parsed event; whether to relay it."""
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        """The stream reached its end normally."""
        return self.done


class ToChat(Protocol):
    """A protocol's stream converter into Chat Completions chunks, fed named events."""

    @property
    def ended(self) -> bool: ...
    def feed(self, event: str, data: Json) -> list[Json]: ...
    def finish(self) -> list[Json]: ...


class FromChat(Protocol):
    """A protocol's stream converter from Chat Completions chunks into its own events."""

    @property
    def ended(self) -> bool: ...
    def feed(self, chunk: Json) -> list[Any]: ...
    def finish(self) -> list[Any]: ...


class WireProtocol:
    """One wire protocol, as the gateway serves it to clients and speaks it to upstreams.

    One instance per protocol, registered by name (`registry.py`) and shared by every
    request: it holds no per-request state, and makes what a request needs (a
    `StreamWatch`, a stream converter). Any two protocols meet through Chat
    Completions, the hub: each converts its requests, answers and streams to it and
    from it (the hub's own conversions are none at all).
    """

    name: ClassVar[str]
    """How the meter, metrics and logs name it (`client_protocol`, `upstream_protocol`)."""
    path: ClassVar[str]
    """Its endpoint, on the gateway and on an upstream alike."""
    vendor: ClassVar[str]
    """The kind of upstream (`[[gateway.upstreams]] protocol`) that speaks it."""
    upstream_auth: ClassVar[Literal["x-api-key", "bearer"]]
    """How an upstream of its vendor takes a credential unless the credential says."""
    key_header: ClassVar[str]
    """Where its clients send their key (it tells which protocol a request outside
    every protocol's endpoint speaks, for its error)."""
    client_headers: ClassVar[tuple[str, ...]] = ()
    """The client's headers it reads (and passes on to its upstreams)."""
    hub: ClassVar[bool] = False
    """Chat Completions: the protocol every other converts to and from."""
    forwards_query: ClassVar[bool] = False
    """A client's query string goes on to an upstream of this same protocol."""
    stream_end: ClassVar[bytes | None] = None
    """What a client's stream ends with after its last event (`data: [DONE]`)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- errors --------------------------------------------------------------------------

    def error_object(self, kind: ErrorKind, message: str) -> Json:
        raise NotImplementedError

    def error_body(self, kind: ErrorKind, message: str) -> bytes:
        return json.dumps(self.error_object(kind, message)).encode()

    def stream_error(self, kind: ErrorKind, message: str, facts: StreamFacts) -> bytes:
        """The explicit last event of a stream that failed after its first byte."""
        raise NotImplementedError

    # --- speaking it to an upstream ------------------------------------------------------

    def serves(self, upstream: UpstreamConfig) -> bool:
        """Whether `upstream` speaks this protocol."""
        return upstream.protocol == self.vendor

    def upstream_headers(
        self, headers: dict[str, str], client: WireProtocol, request: dict[str, str]
    ) -> None:
        """Add this protocol's headers for an upstream to `headers`, from the client's
        `request` headers (in `client`'s protocol)."""

    def tokens(self, usage: Json) -> Tokens:
        """Metering's counts from this protocol's usage record."""
        raise NotImplementedError

    def tokens_of_body(self, body: Any) -> Tokens | None:
        """Usage of a whole (non-streamed) answer, or None if it reports none."""
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            return self.tokens(body["usage"])
        return None

    def watch(self, drop_usage_chunk: bool = False) -> StreamWatch:
        """A watch over one upstream stream; `drop_usage_chunk`: usage the client did
        not ask for stays with the gateway (see `injects_usage`)."""
        raise NotImplementedError

    # --- serving it to a client ----------------------------------------------------------

    def strip_vendor_state(self, body: Json) -> Json:
        """A request without the state only this protocol's vendor understands."""
        raise NotImplementedError

    def injects_usage(self, request: Json) -> bool:
        """Whether a stream relayed unchanged needs usage the client did not ask for."""
        return False

    def wants_usage_chunk(self, request: Json) -> bool:
        """Whether the Chat Completions chunks this client's stream is made from carry
        usage (every protocol but Chat itself reports usage at its end)."""
        return True

    def encode_events(self, items: list[Any], facts: StreamFacts) -> list[bytes]:
        """A stream converter's events as server-sent events, noting in `facts` what
        the explicit error event needs."""
        raise NotImplementedError

    # --- through Chat Completions --------------------------------------------------------

    # Built-ins assign their converters as static methods (a call less per request),
    # so these keep the converters' parameter names.

    def request_to_chat(self, body: Json, model: str) -> Json:
        """A request in this protocol as a Chat Completions request for `model`."""
        raise NotImplementedError

    def request_from_chat(self, body: Json, model: str) -> Json:
        """A Chat Completions request as one in this protocol for `model`."""
        raise NotImplementedError

    def answer_to_chat(self, resp: Json, model: str) -> Json:
        """An answer in this protocol as a chat.completion."""
        raise NotImplementedError

    def answer_from_chat(self, resp: Json, model: str, request: Json) -> Json:
        """A chat.completion as an answer in this protocol; `request`: the client's,
        for what the answer must echo (its tools)."""
        raise NotImplementedError

    def stream_to_chat(self, model: str, include_usage: bool) -> ToChat | None:
        """Upstream events to Chat chunks; None for Chat itself."""
        raise NotImplementedError

    def stream_from_chat(self, model: str, request: Json) -> FromChat | None:
        """Chat chunks to this client's events; None for Chat itself."""
        raise NotImplementedError
