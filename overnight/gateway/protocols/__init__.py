"""The wire protocols the gateway speaks, one object each, in a registry.

Each protocol (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses) is
a class in a module of its own, holding what is its own on the wire: endpoint,
key and auth headers, error bodies, usage, vendor state, stream events, and its
converters to and from Chat Completions. The gateway asks these objects; it
never branches on a protocol's name. `registry.py` holds them by name.
"""

from overnight.gateway.protocols.base import (
    ErrorKind,
    Malformed,
    StreamFacts,
    StreamWatch,
    Tokens,
    WireProtocol,
    error_message,
    kind_for_status,
)
from overnight.gateway.protocols.registry import (
    by_key_header,
    by_path_prefix,
    for_path,
    for_upstream,
    get,
    hub,
    protocols,
)

__all__ = [
    "ErrorKind",
    "Malformed",
    "StreamFacts",
    "StreamWatch",
    "Tokens",
    "WireProtocol",
    "by_key_header",
    "by_path_prefix",
    "error_message",
    "for_path",
    "for_upstream",
    "get",
    "hub",
    "kind_for_status",
    "protocols",
]
