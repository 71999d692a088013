"""Durations and sizes as people write them in org code: "90s", "1h30m", "50MB", "1GiB".

Owns parsing them into seconds and bytes, and the pydantic field types that do
so. Knows nothing else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

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


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"500ms"`, `"5m"`, `"1h30m"`, `"8h"`."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "5m", not a boolean')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = list(_DURATION.finditer(text))
        if not text or "".join(p.group(0) for p in parts) != text:
            raise ValueError(f'"{value}" is not a duration; write e.g. "90s", "5m" or "1h30m"')
        seconds = sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)
    else:
        raise ValueError(f'expected a duration such as "5m", got {value!r}')
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from `1048576`, `"50MB"`, `"32MiB"`, `"1GiB"`, `"2TB"`."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "50MB"')
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(float(match.group(1)) * _SIZE_BYTES[(match.group(2) or "b").lower()])
    raise ValueError(f'"{value}" is not a size; write e.g. "50MB" or "1GiB"')


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]
