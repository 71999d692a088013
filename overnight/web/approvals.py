"""The approvals inbox in the command center: its page, its live part, and the REST API.

Owns `/approvals` (pending approvals with their expiry counting down, approve /
deny with a note, the answered and expired history), the inbox's live fragment
and the nav badge of pending approvals (`Inbox`, a `render.LiveExtra`), and the
JSON API: `GET /api/approvals[?status=]`, `GET /api/approvals/{id}`, `POST
/api/approvals/{id}/approve|deny` with `{"note": ...}`, `GET /api/csrf`. Every
answer goes through the lab's `Approvals` (the same path as `overnight approve`),
recorded as answered by "web", and is refused when the process on the other end
of the connection is an agent's (`peers`). Knows nothing about how approvals are
stored or audited, nor about policies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from markupsafe import Markup

from overnight.governance.action import Action
from overnight.governance.approvals import ApprovalError, Approvals
from overnight.governance.governor import Governor
from overnight.records import Approval, ApprovalStatus
from overnight.web.events import Message
from overnight.web.live import Changes
from overnight.web.peers import agent_peer

if TYPE_CHECKING:
    from overnight.web.render import PageRenderer
    from overnight.web.site import Site

STATUSES: tuple[str, ...] = get_args(ApprovalStatus)
ANSWERED: list[ApprovalStatus] = ["approved", "denied", "expired"]
HISTORY = 100
"""Answered and expired approvals the page lists, newest first."""
MAX_NOTE = 2000
ANSWERED_BY = "web"
NAV = ("/approvals", "Approvals", "approvals")


def summary(action: Mapping[str, Any]) -> str:
    """One line for people: `shell: pip install requests`, `keep: metric 0.41 (+2.00%)`."""
    try:
        return Action.from_mapping(action).summary()
    except (ValueError, TypeError, KeyError):
        pass
    paths = action.get("paths")
    if isinstance(paths, list):  # a trial's edits, judged together
        shown = ", ".join(str(p) for p in paths[:5])
        more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        return f"{action.get('kind', 'edit')}: {shown}{more}"
    text = json.dumps(dict(action), sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def left(seconds: float) -> str:
    """Time to an expiry, as the page's countdown writes it: 42s, 7m 05s, 3h05m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def trial_of(a: Approval) -> int | None:
    trial = a.action.get("trial")
    return trial if isinstance(trial, int) and trial > 0 else None


def as_json(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "lab": a.lab,
        "run": a.run_id,
        "agent": a.agent,
        "summary": summary(a.action),
        "action": dict(a.action),
        "trial": trial_of(a),
        "reason": a.reason,
        "risk": a.risk,
        "correlation": a.correlation,
        "status": a.status,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "answered_at": a.answered_at,
        "answered_by": a.answered_by,
        "note": a.note,
    }


class Inbox:
    """What the page shows of the lab's approvals, read from the store as it stands (no
    writes: the lab's sweeper records expiries), and the pending count for the nav."""

    def __init__(self, governor: Governor) -> None:
        self.governor = governor
        self.approvals: Approvals = governor.approvals
        self._pending: int | None = None

    def context(self) -> dict[str, Any]:
        store, lab = self.approvals.store, self.approvals.lab
        now = time.time()
        pending = store.approvals(lab, statuses=["pending"], limit=100_000)
        self._pending = waiting = sum(1 for a in pending if a.expires_at > now)
        # oldest first from the store; the history reads newest first
        done = store.approvals(lab, statuses=ANSWERED, limit=100_000)
        done.sort(key=lambda a: (a.answered_at or a.created_at, a.id), reverse=True)
        return {
            "pending": pending,
            "waiting": waiting,
            "left": left,
            "history": done[:HISTORY],
            "older": max(0, len(done) - HISTORY),
            "now": now,
            "run": self.governor.run_id,
            "summary": summary,
            "trial_of": trial_of,
        }

    def panel(self, renderer: PageRenderer) -> str:
        return renderer.fragment("_approvals.html", **self.context())

    # -- render.LiveExtra ---------------------------------------------------------------

    def messages(self, renderer: PageRenderer, changes: Changes) -> list[Message]:
        if not changes.approvals:
            return []
        return [Message("approvals", {"html": self.panel(renderer)})]

    def badges(self) -> dict[str, int]:
        if self._pending is None:
            now = time.time()
            pending = self.approvals.store.approvals(
                self.approvals.lab, statuses=["pending"], limit=100_000
            )
            self._pending = sum(1 for a in pending if a.expires_at > now)
        return {"approvals": self._pending}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _note(request: Request) -> str | None:
    """The note of an answer's body: `{"note": "..."}`, `{}` or nothing; ValueError says
    what is wrong with anything else."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f'the body is not JSON ({exc}); send {{"note": "..."}} or nothing'
        ) from None
    if not isinstance(body, dict):
        raise ValueError(
            'the body must be a JSON object like {"note": "..."}, not '
            + raw[:60].decode(errors="replace")
        )
    unknown = sorted(set(body) - {"note"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; the only field is `note`")
    note = body.get("note")
    if note is None:
        return None
    if not isinstance(note, str):
        raise ValueError(f"`note` must be a string, not {type(note).__name__}")
    if len(note) > MAX_NOTE:
        raise ValueError(f"`note` is {len(note)} characters; keep it under {MAX_NOTE}")
    return note.strip() or None


def router(inbox: Inbox, site: Site) -> APIRouter:
    """The inbox's page, fragment and JSON API."""
    api = APIRouter()
    approvals = inbox.approvals

    @api.get("/approvals", response_class=HTMLResponse)
    def page(request: Request) -> str:
        site.ready()
        context = inbox.context()
        with site.live.lock:
            return site.page(
                request, "approvals.html", "approvals", "Approvals",
                panel=Markup(site.renderer.fragment("_approvals.html", **context)),
            )  # fmt: skip

    @api.get("/approvals/panel", response_class=HTMLResponse)
    def panel() -> str:
        return inbox.panel(site.renderer)

    @api.get("/api/csrf")
    def csrf(request: Request) -> dict[str, str]:
        """The CSRF token of this session, for scripts (a page has it in a meta tag)."""
        return {"csrf_token": site.access.csrf_token(request.scope["session_id"])}

    @api.get("/api/approvals")
    def listing(status: str = "") -> Response:
        if status and status not in STATUSES:
            return _error(
                400, f"status {status!r} is not an approval status; use one of: "
                + ", ".join(STATUSES),
            )  # fmt: skip
        approvals.sweep()  # a lapsed approval is listed as what it is: expired
        wanted = [s for s in get_args(ApprovalStatus) if s == status] if status else None
        found = approvals.store.approvals(approvals.lab, statuses=wanted, limit=100_000)
        return JSONResponse({"approvals": [as_json(a) for a in found]})

    @api.get("/api/approvals/{approval_id}")
    def one(approval_id: str) -> Response:
        found = approvals.get(approval_id)
        if found is None:
            return _error(404, _unknown(approvals, approval_id))
        return JSONResponse(as_json(found))

    @api.post("/api/approvals/{approval_id}/{verb}")
    async def answer(request: Request, approval_id: str, verb: str) -> Response:
        if verb not in ("approve", "deny"):
            return _error(404, f"no action {verb!r}; an approval is answered with approve or deny")
        try:
            note = await _note(request)
        except ValueError as exc:
            return _error(400, str(exc))
        client, server = request.scope.get("client"), request.scope.get("server")
        return await asyncio.to_thread(
            _answer, approvals, approval_id, verb == "approve", note, client, server
        )

    return api


def _answer(
    approvals: Approvals,
    approval_id: str,
    approve: bool,
    note: str | None,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
) -> Response:
    refused = agent_peer(client, server)
    if refused is not None:
        return _error(403, f"refused: no agent can answer an approval ({refused})")
    if approvals.get(approval_id) is None:
        return _error(404, _unknown(approvals, approval_id))
    try:
        answered = approvals.answer(approval_id, approve, note, by=ANSWERED_BY)
    except ApprovalError as exc:
        return _error(409, str(exc))
    return JSONResponse(as_json(answered))


def _unknown(approvals: Approvals, approval_id: str) -> str:
    return (
        f"no approval {approval_id.strip().lower()!r} in lab {approvals.lab!r}; "
        "GET /api/approvals lists them"
    )
