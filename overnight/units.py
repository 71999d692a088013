"""Durations and sizes as people write them in org code: "90s", "1h30m", "50MB", "1GiB".

Owns parsing them into seconds and bytes, the pydantic field types that do so,
and the other way round, the short forms the terminal and the command center
show people: a span of time (`span`: 42s, 7m, 3h05m) and a measured figure
(`figure`). Knows nothing else.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from overnight.errors import Invalid

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]i?b|b)?", re.IGNORECASE)
_SIZE_BYTES = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}


_DURATION_FIX = 'write a number and a unit, e.g. "90s", "5m" or "1h30m" (units: ms, s, m, h, d)'
_SIZE_FIX = 'write a number and a unit, e.g. "50MB" or "1GiB" (units: B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)'


def _shown(value: Any) -> str:
    """A value as TOML wrote it, or what it is when that would be noise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a table"
    return repr(value)


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"500ms"`, `"5m"`, `"1h30m"`, `"8h"`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(f"{_shown(value)} is not a duration", fix=_DURATION_FIX)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise Invalid(f"{value!r} is negative", fix='a duration is 0 or more, e.g. "30s"')
        parts = list(_DURATION.finditer(text))
        if not text or "".join(p.group(0) for p in parts) != text:
            raise Invalid(f"{_shown(value)} is not a duration", fix=_DURATION_FIX)
        return sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)
    if not math.isfinite(value):
        raise Invalid(f"{_shown(value)} is not a duration", fix=_DURATION_FIX)
    if value < 0:
        raise Invalid(f"{value!r} is negative", fix="a duration is 0 or more seconds, e.g. 30")
    return float(value)


def parse_size(value: Any) -> int:
    """Bytes from `1048576`, `"50MB"`, `"32MiB"`, `"1GiB"`, `"2TB"`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(f"{_shown(value)} is not a size", fix=_SIZE_FIX)
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise Invalid(f"{_shown(value)} is not a size", fix=_SIZE_FIX)
        value = float(match.group(1)) * _SIZE_BYTES[(match.group(2) or "b").lower()]
    if not math.isfinite(value):
        raise Invalid(f"{_shown(value)} is not a size", fix=_SIZE_FIX)
    if value < 0:
        raise Invalid(f"{value!r} is negative", fix='a size is 0 or more, e.g. "50MB"')
    return int(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]


def span(seconds: float, *, seconds_below: int = 60) -> str:
    """How long, compactly: `42s`, `7m`, `3h05m`; whole seconds below `seconds_below`,
    whole minutes below as many minutes, then hours and minutes."""
    whole = max(0, int(seconds))
    if whole < seconds_below:
        return f"{whole}s"
    if whole < seconds_below * 60:
        return f"{whole // 60}m"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def figure(value: float | None) -> str:
    """A metric or a measurement as people read it: six significant digits, `—` for none."""
    return "—" if value is None else f"{value:.6g}"
