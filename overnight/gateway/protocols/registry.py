"""The wire protocols the gateway speaks, by name.

Owns the registry: `register()` adds a protocol, and the built-ins register the
way a plugin would, from their module's `register_protocols(register)` hook, run
when this module is imported; `get()` finds a protocol by name, `for_path()`
by its endpoint, `for_upstream()` lists those an upstream speaks, and which one a
request to no protocol's endpoint hears its error in. Knows no protocol itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from overnight.gateway.protocols.base import WireProtocol

if TYPE_CHECKING:
    from overnight.org.gateway import UpstreamConfig

Register = Callable[[WireProtocol], None]

BUILTINS = (
    "overnight.gateway.protocols.anthropic",
    "overnight.gateway.protocols.chat",
    "overnight.gateway.protocols.responses",
)
"""Modules whose `register_protocols(register)` hook adds the built-in protocols."""

_protocols: dict[str, WireProtocol] = {}


def register(protocol: WireProtocol) -> None:
    """Add `protocol`; another one of the same name or endpoint is a mistake."""
    for known in _protocols.values():
        if protocol.name == known.name or protocol.path == known.path:
            raise ValueError(f"{protocol!r} takes the name or endpoint of {known!r}")
    _protocols[protocol.name] = protocol


def protocols() -> list[WireProtocol]:
    """Every protocol, in the order they were registered."""
    return list(_protocols.values())


def get(name: str) -> WireProtocol:
    found = _protocols.get(name)
    if found is None:
        known = ", ".join(_protocols)
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


def _register_builtins() -> None:
    for module in BUILTINS:
        importlib.import_module(module).register_protocols(register)


_register_builtins()
