"""Exporting an audit chain: every record as one canonical JSON line, with its hash.

Owns `export_jsonl`, page by page in constant memory. A reader recomputes each
hash from the line (see `record`). Knows nothing about checking the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from overnight.governance.audit.record import json_or_null
from overnight.store import Store


def export_jsonl(
    store: Store, lab: str, write: Callable[[str], Any], *, page_size: int = 1000
) -> int:
    """Write every record of `lab`'s chain as one canonical JSON line (with its hash),
    page by page (constant memory); returns how many."""
    after = count = 0
    while True:
        page = store.audit_records(lab, after=after, limit=page_size)
        if not page:
            return count
        write(
            "".join(
                f'{{"actor":{encode_basestring(r.actor)},"at":{r.at!r},'
                f'"correlation":{json_or_null(r.correlation)},"hash":{encode_basestring(r.hash)},'
                f'"kind":{encode_basestring(r.kind)},"lab":{encode_basestring(r.lab)},'
                f'"payload":{r.payload},"prev":{encode_basestring(r.prev_hash)},"seq":{r.seq},'
                f'"subject":{encode_basestring(r.subject)}}}\n'
                for r in page
            )
        )
        count += len(page)
        after = page[-1].seq
