"""An audit record's format: its canonical JSON and its hash.

Owns `canonical`, `record_hash`, what a caller appends (`Entry`), and the
correlation id that ties a record to a trial. Knows nothing about keys, the
store or who appends.

**Record hash.** Each record is `seq, at, kind, actor, subject, payload,
correlation` of one lab, plus `prev` (the previous record's hash; 64 zeros for
seq 1). Its `hash` is the lowercase hex SHA-256 of its canonical JSON: the
object `{"actor", "at", "correlation", "kind", "lab", "payload", "prev", "seq",
"subject"}` serialized with keys sorted, no whitespace (`,` and `:`), strings
as UTF-8 (no `\\u` escapes for non-ASCII), no NaN or Infinity (a non-finite
number in a payload is written as the string "nan", "inf" or "-inf"); in
Python, `json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False).encode()`. `at` is seconds since the epoch
rounded to microseconds, written as the shortest decimal that reads back as
the same double. The payload is stored as its canonical text and hashed as
stored. `overnight audit export --jsonl` writes each record with its `hash`:
drop `hash`, serialize canonically, SHA-256, and you have it again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from overnight.records import AuditRecord

GENESIS = "0" * 64
"""`prev` of the first record of every chain."""


def canonical(value: Any) -> str:
    """The canonical JSON text of `value` (see the module docstring)."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError):  # NaN, a non-string key, a value JSON has no type for
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    """`value` in JSON's types: string keys, finite numbers; anything else as a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def storable(value: str) -> str:
    """`value` as storable UTF-8 text: lone surrogates and NULs (PostgreSQL refuses them) go."""
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode()
    return value.replace("\x00", "\ufffd")


def json_or_null(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def record_hash(
    lab: str,
    seq: int,
    at: float,
    kind: str,
    actor: str,
    subject: str,
    payload: str,
    correlation: str | None,
    prev: str,
) -> str:
    """SHA-256 of the record's canonical JSON; `payload` is its canonical text.

    Assembled by hand rather than with `canonical()` (same bytes, checked by the
    tests) because verification runs it 100,000 times.
    """
    text = (
        f'{{"actor":{encode_basestring(actor)},"at":{float(at)!r},'
        f'"correlation":{json_or_null(correlation)},"kind":{encode_basestring(kind)},'
        f'"lab":{encode_basestring(lab)},"payload":{payload},"prev":{encode_basestring(prev)},'
        f'"seq":{int(seq)},"subject":{encode_basestring(subject)}}}'
    )
    return hashlib.sha256(text.encode()).hexdigest()


def hash_of(r: AuditRecord, seq: int | None = None) -> str:
    return record_hash(
        r.lab, r.seq if seq is None else seq, r.at, r.kind, r.actor, r.subject, r.payload,
        r.correlation, r.prev_hash,
    )  # fmt: skip


def correlation_id(run_id: str, trial: int | str) -> str:
    """The id that ties an audit record, a span and a ledger row together: `run:trial`."""
    return f"{run_id}:{trial}"


@dataclass(frozen=True)
class Entry:
    """What a caller appends; the chain adds seq, time and hashes."""

    kind: str
    actor: str
    subject: str
    payload: Mapping[str, Any] | None = None
    correlation: str | None = None
