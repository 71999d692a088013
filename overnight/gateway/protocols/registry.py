"""The wire protocols the gateway speaks, by name.

Owns the protocols' registry (`overnight.plugins`, hook `register_protocols`: the
built-ins' modules define it as a third-party plugin would): `get()` finds a
protocol by name, `for_path()` by its endpoint, `for_upstream()` lists those an
upstream speaks, and which one a request to no protocol's endpoint hears its
error in. Knows no protocol itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from overnight.gateway.protocols.base import WireProtocol
from overnight.plugins import Registry

if TYPE_CHECKING:
    from overnight.org.gateway import UpstreamConfig

Register = Callable[[WireProtocol], None]

_protocols: Registry[WireProtocol] = Registry(
    "register_protocols", same=lambda a, b: a.name == b.name or a.path == b.path
)
"""One protocol per name and per endpoint."""


def protocols() -> list[WireProtocol]:
    """Every protocol, in the order they were registered."""
    return list(_protocols)


def get(name: str) -> WireProtocol:
    found = _protocols.get(name)
    if found is None:
        known = ", ".join(p.name for p in _protocols)
        raise ValueError(f"unknown wire protocol {name!r}: expected one of {known}")
    return found


def hub() -> WireProtocol:
    """The protocol every other converts to and from (Chat Completions)."""
    return next(p for p in protocols() if p.hub)


def for_path(path: str) -> WireProtocol | None:
    """The protocol whose endpoint `path` is."""
    return next((p for p in protocols() if p.path == path), None)


def for_upstream(upstream: UpstreamConfig) -> tuple[WireProtocol, ...]:
    """The protocols `upstream` speaks, the one a client of any other gets first: the
    hub when it speaks it (one translation, not two), else the first registered."""
    spoken = sorted((p for p in protocols() if p.serves(upstream)), key=lambda p: not p.hub)
    if not spoken:
        raise ValueError(f"no wire protocol is spoken by a {upstream.protocol!r} upstream")
    return tuple(spoken)


def by_path_prefix(path: str) -> WireProtocol:
    """The protocol whose endpoint `path` begins with, else the hub: how a request to no
    endpoint of the gateway's hears so."""
    return next((p for p in protocols() if path.startswith(p.path)), None) or hub()


def by_key_header(headers: dict[str, str]) -> WireProtocol:
    """The first protocol whose clients send their key the way this request does
    (`x-api-key`: Anthropic), else the hub: how a request to an endpoint every
    protocol shares (`/v1/models`) hears its error."""
    return next((p for p in protocols() if p.key_header in headers), None) or hub()
