"""What every route of the command center shares: the run's live picture, its event hub,
the renderer, the nav, and the answers a request must change (`Refused`).

Owns `Site`: waiting for the first read of the run (`ready`), a whole page in the
base template (`page`), looking an agent up by name, the gateway's route health
and a trial's cost as the pages show them. Knows nothing about which routes
there are (the routers take a `Site`) nor how the app is put together (`app`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Request

from overnight.web.auth import Access
from overnight.web.events import Hub
from overnight.web.live import AgentRow, LiveRun
from overnight.web.render import LiveExtra, PageRenderer, environment
from overnight.web.sources import Sources

READY_S = 60.0
"""How long a request waits for the first read of a big run."""


class Refused(Exception):
    """A request the user must change: `status` and a message saying what and how."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Site:
    """The live picture, the event hub and the renderer of one run, and the nav; `extras`
    are later views' parts in the live picture, `templates` their template folders."""

    def __init__(
        self,
        sources: Sources,
        access: Access,
        nav: Sequence[tuple[str, str, str]],
        extras: Sequence[LiveExtra] = (),
        templates: Sequence[Path] = (),
    ) -> None:
        self.sources = sources
        self.access = access
        run = sources.run
        self.live = LiveRun(
            run.id, run.base_commit, run.created_at, sources.models, sources.terminals
        )
        self.hub = Hub(sources, self.live)
        self.renderer = PageRenderer(self.hub, environment(templates), extras)
        self.nav = list(nav)

    def start(self) -> None:
        self.hub.start(self.renderer)

    def close(self) -> None:
        self.hub.close()

    def ready(self) -> None:
        """Return once the run has been read; Refused when it could not be, or not yet."""
        if not self.hub.ready.wait(READY_S):
            raise Refused(503, "the command center is still reading the run; try again shortly")
        if self.hub.failure is not None:
            raise Refused(500, f"the command center could not read the run: {self.hub.failure}")

    def page(self, request: Request, template: str, view: str, title: str, **context: Any) -> str:
        """A whole page (the base template around `template`); call with the lock held."""
        r = self.renderer
        values = {
            **r.status_context(),
            "view": view,
            "title": title,
            "nav": self.nav,
            "csrf": self.access.csrf_token(request.scope["session_id"]),
            "nonce": request.scope.get("csp_nonce", ""),
            "last_id": self.live.last_id,
            **context,
        }
        return r.fragment(template, **values)

    def agent(self, name: str) -> AgentRow:
        """The agent named `name`; Refused (404) naming the run's agents when there is none."""
        row = self.live.agents.get(name)
        if row is None:
            names = ", ".join(sorted(self.live.agents)) or "none"
            raise Refused(
                404, f"no agent named {name!r} in run {self.live.run_id}; its agents: {names}"
            )
        return row

    def health(self) -> dict[str, Any] | None:
        """The gateway's route health, asked once and then kept current by the hub."""
        if self.hub.health is None and self.sources.gateway_url:
            self.hub.health = self.sources.gateway_health()
        return self.hub.health

    def trial_cost(self, number: int) -> dict[str, Any] | None:
        row = self.live.trials.get(number)
        if row is None or (not row.tokens and row.cost_usd is None):
            return None
        return {"tokens": row.tokens, "cost_usd": row.cost_usd, "unpriced": row.unpriced}
