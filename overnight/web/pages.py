"""The command center's pages and the fragments htmx asks for.

Owns the routes that show the run: the agents grid (`/`, `/grid/tiles`, an
agent's worktree diff), the lab (`/lab`: plot, ledger, best trial and its diff;
`/trials/{number}`), providers and costs, each page with the fragments that
refresh it. All read the live picture under its lock. Knows nothing about
steering agents or the live channels (`steering`, `stream`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from overnight.records import TrialStatus
from overnight.web.live import AgentRow
from overnight.web.site import Refused, Site

NAV = [("/", "Agents", "grid"), ("/lab", "Lab", "lab"), ("/providers", "Providers", "providers"),
       ("/costs", "Costs", "costs")]  # fmt: skip


def router(site: Site) -> APIRouter:
    api = APIRouter()
    _grid(api, site)
    _lab(api, site)
    _providers_and_costs(api, site)
    return api


def _by_name(agent: AgentRow) -> str:
    return agent.name


def _grid(api: APIRouter, site: Site) -> None:
    """The agents grid, its tiles, and an agent's worktree against its best commit."""
    renderer, live = site.renderer, site.live

    @api.get("/", response_class=HTMLResponse)
    def grid(request: Request) -> str:
        site.ready()
        with live.lock:
            agents = sorted(live.agents.values(), key=_by_name)
            counts: dict[str, int] = {}
            for a in agents:
                counts[a.state] = counts.get(a.state, 0) + 1
            return site.page(
                request, "grid.html", "grid", "Agents", agents=agents, counts=counts,
                tile=lambda a: Markup(renderer.tile(a)),
            )  # fmt: skip

    @api.get("/grid/tiles", response_class=HTMLResponse)
    def tiles() -> str:
        site.ready()
        with live.lock:
            return "".join(renderer.tile(a) for a in sorted(live.agents.values(), key=_by_name))

    @api.get("/agents/{name}/diff", response_class=HTMLResponse)
    def agent_diff(name: str) -> str:
        site.ready()
        with live.lock:
            row = site.agent(name)
            worktree, best = row.worktree, row.best_commit
        diff = site.sources.worktree_diff(worktree, best)
        return renderer.fragment(
            "_diff.html",
            diff=diff,
            empty=f"{name}'s worktree is exactly its best commit ({best[:10]})",
            title=f"{worktree} vs its best commit {best[:10]}",
        )


def _lab(api: APIRouter, site: Site) -> None:
    """The lab page: plot, ledger (filtered, a page at a time), the best trial and its diff,
    and one trial's details."""
    renderer, live = site.renderer, site.live

    @api.get("/lab", response_class=HTMLResponse)
    def lab(request: Request) -> str:
        site.ready()
        with live.lock:
            rows, more = renderer.ledger_rows(None, None)
            names = sorted({t.agent for t in live.trials.values()} | set(live.agents))
            return site.page(
                request, "lab.html", "lab", "Lab", plot=renderer.plot_svg(), rows=rows,
                more=more, agent=None, status=None, agent_names=names,
                statuses=[s.value for s in TrialStatus], metric=renderer.metric,
                goal=renderer.goal, **renderer.best_context(),
            )  # fmt: skip

    @api.get("/lab/ledger", response_class=HTMLResponse)
    def ledger(agent: str = "", status: str = "", before: int | None = None) -> str:
        site.ready()
        if status and status not in {s.value for s in TrialStatus}:
            allowed = ", ".join(s.value for s in TrialStatus)
            raise Refused(400, f"status {status!r} is not a trial status; use one of: {allowed}")
        with live.lock:
            known = set(live.agents) | {t.agent for t in live.trials.values()}
            if agent and agent not in known:
                site.agent(agent)
            rows, more = renderer.ledger_rows(agent or None, status or None, before)
            return renderer.fragment(
                "_ledger_rows.html", rows=rows, more=more, agent=agent, status=status
            )

    @api.get("/lab/plot", response_class=HTMLResponse)
    def plot() -> str:
        site.ready()
        with live.lock:
            return str(renderer.plot_svg())

    @api.get("/lab/best", response_class=HTMLResponse)
    def best() -> str:
        site.ready()
        with live.lock:
            return renderer.fragment("_best.html", **renderer.best_context())

    @api.get("/lab/best-diff", response_class=HTMLResponse)
    def best_diff() -> str:
        site.ready()
        with live.lock:
            best = live.best(renderer.goal)
            base = live.base_commit
        if best is None or not best.candidate_commit:
            return renderer.fragment("_diff.html", diff="", empty="no kept trial yet")
        diff = site.sources.commit_diff(base, best.candidate_commit)
        return renderer.fragment(
            "_diff.html",
            diff=diff,
            empty="the best commit is the run's start (the baseline)",
            title=f"{base[:10]}..{best.candidate_commit[:10]}",
        )

    @api.get("/trials/{number}", response_class=HTMLResponse)
    def trial(number: int) -> str:
        site.ready()
        with live.lock:
            row = live.trials.get(number)
        if row is None:
            raise Refused(404, f"run {live.run_id} has no trial {number}")
        full = site.sources.trial(number, row.agent)
        if full is None:
            raise Refused(404, f"run {live.run_id} has no trial {number}")
        return renderer.fragment(
            "_trial.html",
            t=full,
            cost=site.trial_cost(number),
            metric=renderer.metric,
            log_tail=full.log_tail,
        )


def _providers_and_costs(api: APIRouter, site: Site) -> None:
    """The providers' health (the gateway's routes and breakers) and what the run cost."""
    renderer, live = site.renderer, site.live

    @api.get("/providers", response_class=HTMLResponse)
    def providers(request: Request) -> str:
        site.ready()
        with live.lock:
            return site.page(
                request, "providers.html", "providers", "Providers",
                **renderer.providers_context(site.health()),
            )  # fmt: skip

    @api.get("/providers/panel", response_class=HTMLResponse)
    def providers_panel() -> str:
        site.ready()
        with live.lock:
            return renderer.fragment("_providers.html", **renderer.providers_context(site.health()))

    @api.get("/costs", response_class=HTMLResponse)
    def costs(request: Request) -> str:
        site.ready()
        with live.lock:
            return site.page(request, "costs.html", "costs", "Costs", **renderer.costs_context())

    @api.get("/costs/panel", response_class=HTMLResponse)
    def costs_panel() -> str:
        site.ready()
        with live.lock:
            return renderer.fragment("_costs.html", **renderer.costs_context())
