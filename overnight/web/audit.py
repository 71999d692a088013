"""The audit view of the command center: search the lab's audit chain, and verify it.

Owns `/audit` (records newest first, filtered by kind, actor, text and
correlation, a page at a time), its fragments, and `/audit/verify` (the result
of `overnight.governance.audit.verify`: intact with its record count and newest
signed checkpoint, or the first bad record and why). A search reads the chain
backwards in windows through the Store API (seqs run 1..N without gaps), so it
holds nothing in memory between requests and stops after `SEARCH_S` with a way
to search on; a narrow filter over a long chain may take a few pages.

Knows nothing about how records are written or hashed beyond calling `verify`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from overnight.errors import UserError
from overnight.governance.audit import verify
from overnight.governance.governor import Governor
from overnight.records import AuditRecord
from overnight.store import Store
from overnight.web.site import Refused, Site

NAV = ("/audit", "Audit", "audit")
PAGE = 50
"""Records a page shows."""
WINDOW = 2000
"""The most records read per store call while searching (the first read is a page's
worth, each next one twice the last: a common filter is answered from one small read)."""
SEARCH_S = 1.5
"""A search that has not filled its page by then stops and offers to search on."""
MAX_FIELD = 200
KINDS = ("decision", "policy.loaded", "approval", "trial", "agent.state", "gateway.attempt", "run")
"""Suggestions for the kind field (a kind also matches its sub-kinds: `trial` finds
`trial.kept`)."""


@dataclass(frozen=True)
class Query:
    kind: str = ""
    actor: str = ""
    text: str = ""
    correlation: str = ""

    @property
    def empty(self) -> bool:
        return not (self.kind or self.actor or self.text or self.correlation)

    def params(self, **more: Any) -> str:
        values = {k: v for k, v in vars(self).items() if v}
        values.update({k: v for k, v in more.items() if v is not None})
        return urlencode(values)

    def matches(self, r: AuditRecord) -> bool:
        if self.kind and not (r.kind == self.kind or r.kind.startswith(self.kind + ".")):
            return False
        if self.actor and r.actor.lower() != self.actor.lower():
            return False
        if self.correlation:
            c = r.correlation or ""
            # `run:7` is trial 7 of the run; `run` alone is every record of the run
            if c != self.correlation and not c.startswith(self.correlation + ":"):
                return False
        if self.text:
            needle = self.text.lower()
            return any(
                needle in field.lower()
                for field in (r.subject, r.payload, r.kind, r.actor, r.correlation or "")
            ) or r.hash.startswith(needle)
        return True


@dataclass(frozen=True)
class Found:
    records: list[AuditRecord]
    head: int
    """The chain's last seq when the search began."""
    next_before: int | None
    """Search on below this seq (None: the chain's start was reached)."""
    exhausted_budget: bool
    """Stopped for time, not because the page was full."""


def search(
    store: Store,
    lab: str,
    query: Query,
    before: int | None = None,
    limit: int = PAGE,
    budget_s: float = SEARCH_S,
) -> Found:
    """Records matching `query` with seq < `before`, newest first, up to `limit`."""
    head_record = store.audit_head(lab)
    head = head_record.seq if head_record else 0
    hi = head if before is None else min(head, before - 1)
    window = limit if query.empty else 4 * limit
    found: list[AuditRecord] = []
    deadline = time.monotonic() + budget_s
    while hi >= 1:
        lo = max(1, hi - window + 1)
        records = store.audit_records(lab, after=lo - 1, limit=hi - lo + 1)
        for r in reversed(records):
            if r.seq > hi:  # a chain with gaps (tampered with): seen in the last window
                continue
            if query.matches(r):
                found.append(r)
                if len(found) == limit:
                    return Found(found, head, r.seq if r.seq > 1 else None, False)
        hi = lo - 1
        window = min(WINDOW, window * 2)
        if hi >= 1 and time.monotonic() > deadline:
            return Found(found, head, hi + 1, True)
    return Found(found, head, None, False)


def pretty(payload: str) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return payload


class AuditView:
    """The audit page's reads: searches, and one verification at a time."""

    def __init__(self, governor: Governor) -> None:
        self.governor = governor
        self.store = governor.store
        self.lab = governor.auditor.lab
        self._verifying = threading.Lock()

    def rows(self, query: Query, before: int | None) -> dict[str, Any]:
        found = search(self.store, self.lab, query, before)
        return {"found": found, "query": query, "pretty": pretty, "first": before is None}

    def verify(self) -> dict[str, Any]:
        with self._verifying:  # a second click waits for the first answer
            started = time.perf_counter()
            try:
                verdict = verify(self.store, self.lab, self.governor.auditor.key)
            except UserError as exc:
                return {"verdict": None, "error": str(exc), "took": 0.0}
            took = time.perf_counter() - started
        bad = None
        if verdict.seq is not None:
            near = self.store.audit_records(self.lab, after=verdict.seq - 1, limit=1)
            bad = near[0] if near and near[0].seq == verdict.seq else None
        return {"verdict": verdict, "error": None, "took": took, "bad": bad, "pretty": pretty}


def _search(
    kind: str = "", actor: str = "", text: str = "", correlation: str = "",
    before: int | None = None,
) -> tuple[Query, int | None]:  # fmt: skip
    """The search and the page of `/audit` and `/audit/records`, from their query string."""
    for name, value in (("kind", kind), ("actor", actor), ("text", text),
                        ("correlation", correlation)):  # fmt: skip
        if len(value) > MAX_FIELD:
            raise Refused(
                400, f"{name} is {len(value)} characters; search with at most {MAX_FIELD}"
            )
    if before is not None and before < 1:
        raise Refused(
            400, f"before={before}: records start at seq 1; `before` is a seq (1 or more)"
        )
    query = Query(kind.strip().lower(), actor.strip(), text.strip(), correlation.strip())
    return query, before


Search = Annotated[tuple[Query, int | None], Depends(_search)]


def router(view: AuditView, site: Site) -> APIRouter:
    api = APIRouter()

    @api.get("/audit", response_class=HTMLResponse)
    def page(request: Request, search: Search) -> str:
        site.ready()
        context = view.rows(*search)
        with site.live.lock:
            return site.page(request, "audit.html", "audit", "Audit", kinds=KINDS, **context)

    @api.get("/audit/records", response_class=HTMLResponse)
    def records(search: Search) -> str:
        return site.renderer.fragment("_audit_rows.html", **view.rows(*search))

    @api.get("/audit/verify", response_class=HTMLResponse)
    def check() -> str:
        return site.renderer.fragment("_audit_verify.html", **view.verify())

    return api
