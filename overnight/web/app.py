"""The command center's web app: routes, pages, the event stream and the terminal websocket.

Owns `CommandCenter` (the FastAPI app with its event hub and renderer) and every
route: the pages (agents grid, lab, providers, costs), the fragments htmx asks
for, the steering POSTs (pause / resume / restart), `/events` (SSE) and
`/agents/{name}/terminal` (a websocket to `tmux attach`). Every request passes
the token check of `auth.AuthMiddleware`. Views added later come in as routers
(`extra_routers`) and nav entries (`extra_nav`), rendered with the same base
template (`CommandCenter.page`), with a live part (`render.LiveExtra`);
endpoints with their own callers' auth (hooks) are listed in `public_prefixes`.
When `Sources.governor` is set, the lab's governance views join that way: the
approvals inbox and its REST API (`approvals`) and the audit (`audit`). Knows
nothing about how the server is run or where the data comes from beyond `Sources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup

from overnight.agents.supervisor import ControlRefused, UnknownAgent
from overnight.records import TrialStatus
from overnight.web.auth import Access, AuthMiddleware
from overnight.web.events import TOPICS, Hub
from overnight.web.live import LiveRun
from overnight.web.peers import agent_peer
from overnight.web.render import LiveExtra, PageRenderer, environment
from overnight.web.sources import Sources
from overnight.web.terminals import Attachment, output

STATIC = Path(__file__).parent / "static"
VENDOR_FILES = ("htmx.min.js", "xterm.js", "xterm.css", "addon-fit.js")
NAV = [("/", "Agents", "grid"), ("/lab", "Lab", "lab"), ("/providers", "Providers", "providers"),
       ("/costs", "Costs", "costs")]  # fmt: skip
READY_S = 60.0
"""How long a request waits for the first read of a big run."""


class Refused(Exception):
    """A request the user must change: `status` and a message saying what and how."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def missing_assets() -> list[str]:
    """Front-end files missing from static/vendor (committed there, credited in its
    THIRD_PARTY.toml): only a broken install or checkout lacks them."""
    return [name for name in VENDOR_FILES if not (STATIC / "vendor" / name).is_file()]


class ServerTiming:
    """Adds `Server-Timing: app;dur=MS` (time to the response's head) to every answer, so
    the browser's devtools and the benchmark see how long the server took."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - started) * 1000
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"server-timing", f"app;dur={took:.2f}".encode()),
                    ],
                }
            await send(message)

        await self.app(scope, receive, timed)


class CommandCenter:
    """The app, its live picture and its event hub, for one run."""

    def __init__(
        self,
        sources: Sources,
        access: Access,
        *,
        extra_routers: Sequence[APIRouter] = (),
        extra_nav: Sequence[tuple[str, str, str]] = (),
        public_prefixes: Sequence[str] = (),
        extra_templates: Sequence[Path] = (),
    ) -> None:
        self.sources = sources
        self.access = access
        run = sources.run
        self.live = LiveRun(
            run.id, run.base_commit, run.created_at, sources.models, sources.terminals
        )
        self.hub = Hub(sources, self.live)
        extras: list[LiveExtra] = []
        if sources.governor is not None:
            from overnight.web import approvals, audit

            inbox = approvals.Inbox(sources.governor)
            extras.append(inbox)
            extra_routers = [
                approvals.router(inbox), audit.router(audit.AuditView(sources.governor)),
                *extra_routers,
            ]  # fmt: skip
            extra_nav = [approvals.NAV, audit.NAV, *extra_nav]
        self.renderer = PageRenderer(self.hub, environment(extra_templates), extras)
        self.nav = [*NAV, *extra_nav]
        self.api = FastAPI(title="overnight", docs_url=None, redoc_url=None, openapi_url=None)
        self._routes(self.api)
        for router in extra_routers:
            self.api.include_router(router)
        self.api.mount("/static", StaticFiles(directory=STATIC), name="static")
        self.app = AuthMiddleware(ServerTiming(self.api), access, tuple(public_prefixes))
        self.api.state.center = self

    def start(self) -> None:
        self.hub.start(self.renderer)

    def close(self) -> None:
        self.hub.close()

    # -- helpers ------------------------------------------------------------------------

    def _ready(self) -> None:
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

    def agent(self, name: str) -> Any:
        row = self.live.agents.get(name)
        if row is None:
            names = ", ".join(sorted(self.live.agents)) or "none"
            raise Refused(
                404, f"no agent named {name!r} in run {self.live.run_id}; its agents: {names}"
            )
        return row

    # -- routes -------------------------------------------------------------------------

    def _routes(self, api: FastAPI) -> None:
        center = self
        renderer = self.renderer
        live = self.live

        @api.exception_handler(Refused)
        async def refused(_request: Request, exc: Refused) -> Response:
            return PlainTextResponse(f"{exc.status}: {exc.message}", status_code=exc.status)

        @api.get("/", response_class=HTMLResponse)
        def grid(request: Request) -> str:
            center._ready()
            with live.lock:
                agents = sorted(live.agents.values(), key=lambda a: a.name)
                counts: dict[str, int] = {}
                for a in agents:
                    counts[a.state] = counts.get(a.state, 0) + 1
                return center.page(
                    request, "grid.html", "grid", "Agents", agents=agents, counts=counts,
                    tile=lambda a: Markup(renderer.tile(a)),
                )  # fmt: skip

        @api.get("/grid/tiles", response_class=HTMLResponse)
        def tiles() -> str:
            center._ready()
            with live.lock:
                return "".join(
                    renderer.tile(a) for a in sorted(live.agents.values(), key=lambda a: a.name)
                )

        @api.get("/lab", response_class=HTMLResponse)
        def lab(request: Request) -> str:
            center._ready()
            with live.lock:
                rows, more = renderer.ledger_rows(None, None)
                names = sorted({t.agent for t in live.trials.values()} | set(live.agents))
                return center.page(
                    request, "lab.html", "lab", "Lab", plot=renderer.plot_svg(), rows=rows,
                    more=more, agent=None, status=None, agent_names=names,
                    statuses=[s.value for s in TrialStatus], metric=renderer.metric,
                    goal=renderer.goal, **renderer.best_context(),
                )  # fmt: skip

        @api.get("/lab/ledger", response_class=HTMLResponse)
        def ledger(agent: str = "", status: str = "", before: int | None = None) -> str:
            center._ready()
            if status and status not in {s.value for s in TrialStatus}:
                allowed = ", ".join(s.value for s in TrialStatus)
                raise Refused(
                    400, f"status {status!r} is not a trial status; use one of: {allowed}"
                )
            with live.lock:
                known = set(live.agents) | {t.agent for t in live.trials.values()}
                if agent and agent not in known:
                    center.agent(agent)
                rows, more = renderer.ledger_rows(agent or None, status or None, before)
                return renderer.fragment(
                    "_ledger_rows.html", rows=rows, more=more, agent=agent, status=status
                )

        @api.get("/lab/plot", response_class=HTMLResponse)
        def plot() -> str:
            center._ready()
            with live.lock:
                return str(renderer.plot_svg())

        @api.get("/lab/best", response_class=HTMLResponse)
        def best() -> str:
            center._ready()
            with live.lock:
                return renderer.fragment("_best.html", **renderer.best_context())

        @api.get("/lab/best-diff", response_class=HTMLResponse)
        def best_diff() -> str:
            center._ready()
            with live.lock:
                best = live.best(renderer.goal)
                base = live.base_commit
            if best is None or not best.candidate_commit:
                return renderer.fragment("_diff.html", diff="", empty="no kept trial yet")
            diff = center.sources.commit_diff(base, best.candidate_commit)
            return renderer.fragment(
                "_diff.html",
                diff=diff,
                empty="the best commit is the run's start (the baseline)",
                title=f"{base[:10]}..{best.candidate_commit[:10]}",
            )

        @api.get("/trials/{number}", response_class=HTMLResponse)
        def trial(number: int) -> str:
            center._ready()
            with live.lock:
                row = live.trials.get(number)
            if row is None:
                raise Refused(404, f"run {live.run_id} has no trial {number}")
            full = center.sources.trial(number, row.agent)
            if full is None:
                raise Refused(404, f"run {live.run_id} has no trial {number}")
            cost = center.hub_trial_cost(number)
            return renderer.fragment(
                "_trial.html", t=full, cost=cost, metric=renderer.metric, log_tail=full.log_tail
            )

        @api.get("/agents/{name}/diff", response_class=HTMLResponse)
        def agent_diff(name: str) -> str:
            center._ready()
            with live.lock:
                row = center.agent(name)
                worktree, best = row.worktree, row.best_commit
            diff = center.sources.worktree_diff(worktree, best)
            return renderer.fragment(
                "_diff.html",
                diff=diff,
                empty=f"{name}'s worktree is exactly its best commit ({best[:10]})",
                title=f"{worktree} vs its best commit {best[:10]}",
            )

        @api.post("/agents/{name}/{action}")
        def steer(request: Request, name: str, action: str) -> Response:
            refused = agent_peer(request.scope.get("client"), request.scope.get("server"))
            if refused is not None:
                raise Refused(403, f"refused: no agent can steer agents ({refused})")
            center._ready()
            with live.lock:
                center.agent(name)
            control = center.sources.control
            if action not in ("pause", "resume", "restart"):
                raise Refused(
                    404, f"no action {action!r}; an agent can be paused, resumed or restarted"
                )
            if control is None:
                raise Refused(409, "agents cannot be steered: no supervisor runs beside this page")
            try:
                getattr(control, action)(name)
            except UnknownAgent as exc:
                raise Refused(404, str(exc)) from None
            except ControlRefused as exc:
                raise Refused(409, str(exc)) from None
            return Response(status_code=204)

        @api.get("/providers", response_class=HTMLResponse)
        def providers(request: Request) -> str:
            center._ready()
            with live.lock:
                return center.page(
                    request, "providers.html", "providers", "Providers",
                    **renderer.providers_context(center.current_health()),
                )  # fmt: skip

        @api.get("/providers/panel", response_class=HTMLResponse)
        def providers_panel() -> str:
            center._ready()
            with live.lock:
                return renderer.fragment(
                    "_providers.html", **renderer.providers_context(center.current_health())
                )

        @api.get("/costs", response_class=HTMLResponse)
        def costs(request: Request) -> str:
            center._ready()
            with live.lock:
                return center.page(
                    request, "costs.html", "costs", "Costs", **renderer.costs_context()
                )

        @api.get("/costs/panel", response_class=HTMLResponse)
        def costs_panel() -> str:
            center._ready()
            with live.lock:
                return renderer.fragment("_costs.html", **renderer.costs_context())

        @api.get("/events")
        async def events(request: Request, view: str = "all", after: int | None = None) -> Response:
            if view != "all" and view not in TOPICS:
                allowed = ", ".join(["all", *TOPICS])
                raise Refused(400, f"view {view!r} is unknown; use one of: {allowed}")
            if not center.hub.ready.is_set():
                await asyncio.to_thread(center._ready)
            center.hub.bind(asyncio.get_running_loop())
            header = request.headers.get("last-event-id")
            start = int(header) if header and header.isdigit() else after

            def screens() -> list[Any]:
                with live.lock:
                    return renderer.screens(list(live.agents))

            return StreamingResponse(
                center.hub.stream(view, start, header is not None, screens),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )

        @api.websocket("/agents/{name}/terminal")
        async def terminal(ws: WebSocket, name: str, cols: int = 120, rows: int = 40) -> None:
            await center.attach(ws, name, cols, rows)

    # -- pieces the routes share ---------------------------------------------------------

    def current_health(self) -> dict[str, Any] | None:
        if self.hub.health is None and self.sources.gateway_url:
            self.hub.health = self.sources.gateway_health()
        return self.hub.health

    def hub_trial_cost(self, number: int) -> Any:
        row = self.live.trials.get(number)
        if row is None or (not row.tokens and row.cost_usd is None):
            return None
        return {"tokens": row.tokens, "cost_usd": row.cost_usd, "unpriced": row.unpriced}

    async def attach(self, ws: WebSocket, name: str, cols: int, rows: int) -> None:
        """An interactive terminal into agent `name`'s tmux session, over `ws`."""
        # Keystrokes into an agent's terminal can answer its CLI's own permission
        # prompts: no agent's process may type into one (its own included).
        refused = await asyncio.to_thread(
            agent_peer, ws.scope.get("client"), ws.scope.get("server")
        )
        await ws.accept()
        session = self.sources.terminals.get(name)
        tmux = self.sources.tmux
        problem = None
        if refused is not None:
            problem = f"refused: no agent can use an agent's terminal ({refused})"
        elif name not in self.live.agents:
            problem = f"no agent named {name!r} in run {self.live.run_id}"
        elif session is None or tmux is None:
            problem = (
                f"agent {name!r} runs inside overnight (no terminal): see its tile and the ledger"
            )
        elif await asyncio.to_thread(tmux.get, session) is None:
            problem = f"agent {name!r} has no terminal session right now (it is being started?)"
        if problem is not None:
            await ws.send_text(f"\r\n{problem}\r\n")
            await ws.close(code=4403 if refused else 4404, reason=problem[:120])
            return
        assert session is not None and tmux is not None
        attachment = Attachment(tmux, session, max(2, min(cols, 500)), max(2, min(rows, 200)))

        async def pump() -> None:
            async for chunk in output(attachment):
                await ws.send_bytes(chunk)
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.close(code=1000, reason="the terminal closed")

        reader = asyncio.create_task(pump())
        try:
            while True:
                message = json.loads(await ws.receive_text())
                if "input" in message:
                    attachment.write(str(message["input"]).encode())
                elif "resize" in message:
                    c, r = message["resize"]
                    attachment.resize(int(c), int(r))
        except (WebSocketDisconnect, RuntimeError, ValueError, TypeError, KeyError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await asyncio.to_thread(attachment.close)


__all__ = ["CommandCenter", "Refused", "missing_assets"]
