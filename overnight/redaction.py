"""What overnight must never write down: the secrets this process knows, and their redaction.

Owns one process-wide set of secret values — the gateway's provider credentials,
every agent's virtual key, the command center's token, a database password — and
`redact`, which replaces each of them in a text before it is written to a trial
log, the store, an event or a prompt. The walls around experiments and agents
(`overnight.lab.sandbox`) keep secrets out of their reach; this is the net under
the walls, for a value that gets out anyway (an experiment that prints its
environment where no sandbox runs, a provider error that echoes a key).

Knows nothing about where secrets come from: callers `register` them as they
read them. Imports nothing else of overnight, so every layer may use it.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from typing import Any

MIN_LENGTH = 8
"""Shorter values are not registered: redacting every `abc` in a log would help nobody."""
MARK = "[redacted]"

_lock = threading.Lock()
_values: set[str] = set()
_text: re.Pattern[str] | None = None
_bytes: re.Pattern[bytes] | None = None
_longest = 0


def register(*values: str | None) -> None:
    """Add secret values (None, blanks and values shorter than MIN_LENGTH are ignored)."""
    global _text, _bytes, _longest
    fresh = {v.strip() for v in values if v and len(v.strip()) >= MIN_LENGTH} - _values
    if not fresh:
        return
    with _lock:
        _values.update(fresh)
        # longest first: a secret that contains another is replaced whole
        ordered = sorted(_values, key=len, reverse=True)
        _text = re.compile("|".join(re.escape(v) for v in ordered))
        _bytes = re.compile(b"|".join(re.escape(v.encode()) for v in ordered))
        _longest = len(ordered[0].encode())


def register_url_password(url: str | None) -> None:
    """The password of a URL such as `postgresql://user:pw@host/db`, if it has one."""
    if url:
        register(urllib.parse.urlsplit(url).password)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by MARK."""
    pattern = _text
    if pattern is None or not text:
        return text
    return pattern.sub(MARK, text)


def redact_json(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every string redacted."""
    if _text is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value


def redact_bytes(data: bytes) -> bytes:
    pattern = _bytes
    if pattern is None or not data:
        return data
    return pattern.sub(MARK.encode(), data)


def known() -> bool:
    """Whether any secret is registered (callers may skip work when none is)."""
    return _text is not None


class StreamRedactor:
    """Redacts a byte stream that arrives in chunks, where a secret may straddle two.

    `feed` returns what is safe to pass on; it holds back the last bytes that could
    still be the start of a secret (at most the longest secret's length less one),
    which `flush` releases at the end.
    """

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if _bytes is None:
            out, self._held = self._held + chunk, b""
            return out
        data = redact_bytes(self._held + chunk)
        keep = min(len(data), _longest - 1)
        # never hold back part of a marker we just wrote: that would split it on output
        cut = len(data) - keep
        marker = MARK.encode()
        start = data.rfind(marker, 0, len(data))
        if start != -1 and start < cut < start + len(marker):
            cut = start + len(marker)
        self._held = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        out, self._held = redact_bytes(self._held), b""
        return out
