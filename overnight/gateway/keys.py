"""Virtual keys: what an agent holds instead of a provider key.

Owns issuing keys and telling which agent a presented key belongs to. Keeps
only sha256 hashes, so whatever persists `hashes` never holds a usable key.
Knows nothing about HTTP or the store.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Mapping

PREFIX = "ovn-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """Agent keys by hash. Safe to use from several threads."""

    def __init__(self, hashes: Mapping[str, str] | None = None) -> None:
        self._agents: dict[str, str] = dict(hashes or {})
        self._lock = threading.Lock()

    def issue(self, agent: str) -> str:
        """A new key for `agent`; the only time the key itself is seen."""
        key = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._agents[key_hash(key)] = agent
        return key

    def verify(self, key: str | None) -> str | None:
        """The agent holding `key`, or None for a missing or unknown key."""
        if not key:
            return None
        return self._agents.get(key_hash(key))

    def revoke(self, agent: str) -> int:
        """Forget every key of `agent`; how many there were."""
        with self._lock:
            gone = [h for h, a in self._agents.items() if a == agent]
            for h in gone:
                del self._agents[h]
        return len(gone)

    @property
    def hashes(self) -> dict[str, str]:
        """sha256 hex -> agent, for the store to keep."""
        with self._lock:
            return dict(self._agents)
