"""The notifications page of the command center: the sinks, and what each was told.

Owns `/notifications` (the lab's `[[notify]]` sinks, where each sends, what it
hears of; the latest notifications with their delivery: queued, delivered with
the sink's answer, failed with why, the tries), its panel that refreshes itself,
and the button that lets this browser raise desktop notifications (the browser
sink's messages arrive on the event stream as `notify`). Reads the store only;
knows nothing about delivering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from overnight.store import Store

if TYPE_CHECKING:
    from overnight.web.site import Site

NAV = ("/notifications", "Notifications", "notifications")
SHOWN = 200
"""Notifications the page lists, newest first."""


@dataclass(frozen=True)
class SinkRow:
    name: str
    kind: str
    where: str
    events: str
    min_interval: float


def router(store: Store, lab: str, sinks: Sequence[SinkRow]) -> APIRouter:
    api = APIRouter()

    def context() -> dict[str, Any]:
        rows = store.notifications(lab, limit=SHOWN, newest=True)
        return {"sinks": sinks, "rows": rows[::-1]}

    @api.get("/notifications", response_class=HTMLResponse)
    def page(request: Request) -> str:
        center: Site = request.app.state.center
        center.ready()
        panel = center.renderer.fragment("_notifications.html", **context())
        with center.live.lock:
            return center.page(
                request, "notifications.html", "notifications", "Notifications",
                panel=Markup(panel),
            )  # fmt: skip

    @api.get("/notifications/panel", response_class=HTMLResponse)
    def panel(request: Request) -> str:
        center: Site = request.app.state.center
        return center.renderer.fragment("_notifications.html", **context())

    return api
