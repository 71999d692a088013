"""Advice for the next night, drawn from this one's costs.

Owns the rules that turn figures into sentences a person acts on: which agents and
routes bought the most improvement per dollar, an agent that spent more than
`IDLE_SPEND_USD` with no keep for `IDLE_HOURS`, a route whose cache share is low.
Knows nothing about where the figures came from.
"""

from __future__ import annotations

from overnight.costs.summary import Costs
from overnight.records import CostGroup

IDLE_SPEND_USD = 1.0
IDLE_HOURS = 2.0
LOW_CACHE_SHARE = 0.2
"""Below this share of input read from the cache, a route's prompts are not being reused."""
MIN_CACHE_INPUT = 100_000
"""Input tokens a route must have seen before its cache share means anything."""


def advise(costs: Costs, *, started: float) -> list[str]:
    """The sentences, most useful first."""
    out: list[str] = []
    buyers = sorted(
        (a for a in costs.agents if a.improvement_per_usd),
        key=lambda a: a.improvement_per_usd or 0.0,
        reverse=True,
    )
    if buyers:
        best = buyers[0]
        out.append(
            f"agent {best.name} ({best.runtime}) bought the most improvement per dollar: "
            f"{best.improvement_per_usd:.4g} per $ ({best.keeps} keeps for ${best.spend.usd:.2f})"
            + (f"; give it more of the budget than {buyers[-1].name}" if len(buyers) > 1 else "")
        )
    mine: dict[str, list[CostGroup]] = {}  # each agent's groups
    for g in costs.groups:
        mine.setdefault(g.agent, []).append(g)
    route_gain: dict[str, float] = {}
    for a in costs.agents:
        if a.spend.usd <= 0 or a.improvement <= 0:
            continue
        for g in mine.get(a.name, []):
            share = g.cost_usd / a.spend.usd
            route_gain[g.route] = route_gain.get(g.route, 0.0) + a.improvement * share
    ranked = sorted(
        ((gain / costs.routes[r].usd, r) for r, gain in route_gain.items() if costs.routes[r].usd),
        reverse=True,
    )
    if ranked:
        per_usd, route = ranked[0]
        out.append(f"route {route} bought the most improvement per dollar: {per_usd:.4g} per $")
    for a in costs.agents:
        since = a.last_keep_at or started
        hours = (costs.at - since) / 3600
        if hours < IDLE_HOURS:
            continue
        spent = sum(g.cost_usd for g in mine.get(a.name, []) if (g.hour + 1) * 3600 > since)
        if spent > IDLE_SPEND_USD:
            out.append(
                f"agent {a.name} spent ${spent:.2f} over {hours:.1f} h with no keep: pause it, "
                "change its model or its brief"
            )
    for route, s in sorted(costs.routes.items()):
        total_input = s.input_tokens + s.cache_read_tokens + s.cache_write_tokens
        cache = s.cache_share
        if total_input >= MIN_CACHE_INPUT and cache is not None and cache < LOW_CACHE_SHARE:
            out.append(
                f"route {route} read only {cache:.0%} of its input from the prompt cache: keep "
                "the start of its prompts stable (program, rules, files first; what changes last)"
            )
    return out
