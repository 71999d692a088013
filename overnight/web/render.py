"""Pages and fragments: the Jinja templates filled from the live picture.

Owns the template environment, the numbers' formatting, and the `Renderer` the
event hub calls to turn what changed into fragments (a tile's header, a ledger
row, the plot, the best commit, provider health, costs, the status line). The
same templates render the first page load and every live update, so the two can
never disagree. Knows nothing about HTTP or the store (it reads `Sources` only
for the config and costs the hub already fetched).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from overnight.proposers import in_terminal
from overnight.units import figure, span
from overnight.web.charts import brownout_timeline, metric_plot, spend_chart
from overnight.web.events import Hub, Message
from overnight.web.live import AgentRow, Changes, TrialRow

TEMPLATES = Path(__file__).parent / "templates"
STATES = ("working", "idle", "waiting", "paused", "crashed")
LEDGER_PAGE = 200
"""Ledger rows a page shows at first (newest first); "more" loads the next ones."""


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _tokens(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    return str(value)


def _clock(at: float | None) -> str:
    return "" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _ago(since: float | None) -> str:
    """How long ago `since` was: 42s, 7m, 3h05m."""
    return "" if since is None else span(time.time() - since)


def diff_html(diff: str) -> Markup:
    """A unified diff with its added, removed and header lines marked for colour."""
    lines = []
    for line in diff.splitlines():
        cls = ""
        if line.startswith(("+++", "---", "diff --git", "index ")):
            cls = "dh"
        elif line.startswith("@@"):
            cls = "dk"
        elif line.startswith("+"):
            cls = "da"
        elif line.startswith("-"):
            cls = "dr"
        text = html.escape(line, quote=False)
        lines.append(f'<span class="{cls}">{text}</span>' if cls else text)
    return Markup("\n".join(lines))


class LiveExtra(Protocol):
    """A later view's part in the live picture (the approvals inbox, ...): the messages it
    sends for what changed, and the counts it shows as badges in the nav."""

    def messages(self, renderer: PageRenderer, changes: Changes) -> list[Message]:
        """Called by the event hub with the picture's lock held."""

    def badges(self) -> dict[str, int]:
        """Nav key -> count (0 shows no badge); cheap, called for every status line."""


def environment(extra: Sequence[Path] = ()) -> Environment:
    """Our templates, then `extra` folders (a later view's own, which may extend
    "base.html" or fill "page.html"'s `body`)."""
    env = Environment(
        loader=FileSystemLoader([TEMPLATES, *extra]),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=figure, usd=_usd, tokens=_tokens, clock=_clock, ago=_ago, diff=diff_html)
    env.globals["states"] = STATES
    return env


class PageRenderer:
    """Fragments from the live picture; call with the picture's lock held."""

    def __init__(
        self, hub: Hub, env: Environment | None = None, extras: Sequence[LiveExtra] = ()
    ) -> None:
        self.hub = hub
        self.extras = list(extras)
        self.live = hub.live
        self.sources = hub.sources
        self.env = env or environment()
        config = self.sources.config
        self.metric = config.lab.metric
        self.goal = config.lab.goal.value
        self.lab = config.lab.name
        self._plot: tuple[int, Markup] = (-1, Markup(""))

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    # -- pieces -------------------------------------------------------------------------

    def agent_context(self, row: AgentRow) -> dict[str, Any]:
        control = self.sources.control
        return {
            "a": row,
            "external": in_terminal(row.runtime),
            "has_terminal": row.terminal is not None and self.sources.tmux is not None,
            "user_paused": control.paused_by_user(row.name) if control else False,
            "can_steer": control is not None,
            "recent": [self.live.trials[n] for n in reversed(row.recent) if n in self.live.trials],
            "running": self.live.trials.get(row.running) if row.running is not None else None,
        }

    def agent_head(self, row: AgentRow) -> str:
        return self.fragment("_agent_head.html", **self.agent_context(row))

    def tile(self, row: AgentRow) -> str:
        screen = self.hub.mirror.screen(row.name) if self.hub.mirror else None
        return self.fragment("_tile.html", screen=screen, **self.agent_context(row))

    def trial_row(self, t: TrialRow) -> str:
        return self.fragment("_trial_row.html", t=t)

    def ledger_rows(
        self, agent: str | None, status: str | None, before: int | None = None
    ) -> tuple[list[TrialRow], bool]:
        """Newest first, filtered; (a page of rows, whether there are more)."""
        rows: list[TrialRow] = []
        for number in sorted(self.live.trials, reverse=True):
            if before is not None and number >= before:
                continue
            t = self.live.trials[number]
            if agent and t.agent != agent:
                continue
            if status and t.status != status:
                continue
            rows.append(t)
            if len(rows) > LEDGER_PAGE:
                return rows[:LEDGER_PAGE], True
        return rows, False

    def plot_svg(self) -> Markup:
        """The plot, drawn again only when a trial has moved since it was last drawn."""
        if self._plot[0] != self.live.version:
            svg = metric_plot(self.live.ordered_trials(), self.metric, self.goal)
            self._plot = (self.live.version, Markup(svg))
        return self._plot[1]

    def best_context(self) -> dict[str, Any]:
        best = self.live.best(self.goal)
        base = self.live.baseline()
        change = None
        if best and base and best.metric is not None and base.metric:
            change = (best.metric - base.metric) / abs(base.metric) * 100
        lab = self.sources.config.lab
        return {
            "best": best,
            "baseline": base,
            "change": change,
            "base_commit": self.live.base_commit,
            "noise_floor": self.live.noise_floor,
            # a number set, 0 where the floor is not measured, None while it is to be
            "min_delta": lab.min_delta
            if isinstance(lab.min_delta, int | float)
            else (None if lab.measures_noise else 0.0),
            "holdout": lab.holdout_name if lab.holdout else None,
        }

    def providers_context(self, health: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "health": health,
            "has_gateway": self.sources.gateway_url is not None,
            "timeline": Markup(brownout_timeline(self.live.brownouts, self.live.created_at)),
            "brownouts": list(reversed(self.live.brownouts))[:50],
        }

    def costs_context(self) -> dict[str, Any]:
        agents = sorted(self.live.agents.values(), key=lambda a: -a.cost_usd)
        trials = sorted(
            (t for t in self.live.trials.values() if t.cost_usd),
            key=lambda t: -(t.cost_usd or 0.0),
        )
        kept = self._cost_per_keep()
        total = sum(a.cost_usd for a in agents)
        keeps = sum(a.kept for a in agents)
        o = self.sources.cost_overview()
        fc = o.forecast
        started = self.live.created_at
        chart = spend_chart(
            o.costs.series, started, until=fc.until, at_end=fc.at_end,
            anomalies=[(e.at, e.agent or "", str(e.payload.get("title", "cost anomaly")))
                       for e in o.anomalies],
            forecasts=[(r.at, r.at_end) for r in o.forecasts
                       if r.at_end is not None and r.until == fc.until],
        )  # fmt: skip
        return {
            "overview": o,
            "spend_chart": Markup(chart),
            "agents": agents,
            "top_trials": trials[:25],
            "kept": kept,
            "total": total,
            "tokens": sum(a.tokens for a in agents),
            "per_keep": total / keeps if keeps else None,
            "days": self.live.days,
            "budgets": self.hub.budget_rows,
            "has_gateway": self.sources.config.gateway is not None,
            "usage_at": self.hub.usage_at,
        }

    def _cost_per_keep(self) -> list[dict[str, Any]]:
        """Each kept trial with what its agent spent since its previous keep (the price of
        that improvement, failures on the way included)."""
        out = []
        spent: dict[str, float] = {}
        tokens: dict[str, int] = {}
        tried: dict[str, int] = {}
        for t in self.live.ordered_trials():
            spent[t.agent] = spent.get(t.agent, 0.0) + (t.cost_usd or 0.0)
            tokens[t.agent] = tokens.get(t.agent, 0) + t.tokens
            tried[t.agent] = tried.get(t.agent, 0) + (1 if t.final else 0)
            if t.status == "kept" and t.agent != "baseline":
                out.append(
                    {
                        "t": t,
                        "cost": spent[t.agent],
                        "tokens": tokens[t.agent],
                        "trials": tried[t.agent],
                    }
                )
                spent[t.agent], tokens[t.agent], tried[t.agent] = 0.0, 0, 0
        return list(reversed(out))[:50]

    def status_context(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for a in self.live.agents.values():
            states[a.state] = states.get(a.state, 0) + 1
        return {
            "lab": self.lab,
            "run": self.live.run_id,
            "trials": self.live.finished,
            "running": self.live.in_flight,
            "state_counts": states,
            "best": self.live.best(self.goal),
            "metric": self.metric,
            "brownout": [b for b in self.live.brownouts if b.ended is None],
            "cost": sum(a.cost_usd for a in self.live.agents.values()),
            "last_id": self.live.last_id,
            "stopped": self.live.stopped,
            "badges": {k: n for e in self.extras for k, n in e.badges().items()},
        }

    # -- the hub's Renderer -------------------------------------------------------------

    def messages(self, changes: Changes) -> list[Message]:
        out = []
        for name in sorted(changes.agents):
            row = self.live.agents.get(name)
            if row is not None:
                out.append(
                    Message(
                        "agent",
                        {
                            "agent": name,
                            "state": row.state,
                            "html": self.agent_head(row),
                            "extra": self.fragment("_tile_extra.html", **self.agent_context(row)),
                        },
                    )
                )
        for number in sorted(changes.trials):
            t = self.live.trials.get(number)
            if t is not None:
                out.append(
                    Message(
                        "trial",
                        {
                            "number": number,
                            "agent": t.agent,
                            "status": t.status,
                            "html": self.trial_row(t),
                        },
                    )
                )
        if changes.kept:
            out.append(
                Message("best", {"html": self.fragment("_best.html", **self.best_context())})
            )
        if changes.brownouts:
            out.append(self.providers(self.hub.health))
        for extra in self.extras:
            out.extend(extra.messages(self, changes))
        return out

    def screen(self, agent: str, html_: str) -> Message:
        return Message("screen", {"agent": agent, "html": html_})

    def plot(self) -> Message:
        return Message("plot", {"html": str(self.plot_svg())})

    def providers(self, health: dict[str, Any] | None) -> Message:
        return Message(
            "providers",
            {"html": self.fragment("_providers.html", **self.providers_context(health))},
        )

    def costs(self) -> Message:
        return Message("costs", {"html": self.fragment("_costs.html", **self.costs_context())})

    def status(self) -> Message:
        return Message("status", {"html": self.fragment("_status.html", **self.status_context())})

    def screens(self, names: Iterable[str]) -> list[Message]:
        mirror = self.hub.mirror
        if mirror is None:
            return []
        out = []
        for name in names:
            screen = mirror.screen(name)
            if screen is not None:
                out.append(self.screen(name, screen))
        return out
