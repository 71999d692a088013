"""Burn rate and forecast: what the night will cost by its end, and when budgets run out.

Owns the burn rate (USD per hour over the last full hour and the current one, from
the store's hourly rollup), the projection to the run's `--for` deadline, and the
outlook of each gateway budget (org, agent, per agent; daily and total): spent,
left, and when it runs out at the current rate. Knows nothing about enforcing a
budget (the gateway does) or showing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from overnight.org import OrgConfig
from overnight.org.gateway import GatewayConfig, LimitConfig
from overnight.records import CostGroup

WINDOW_HOURS = 2
"""The burn rate is the spend of the current UTC hour and the one before it, over the time
they cover (the run's start, if later): about the last one to two hours."""


@dataclass(frozen=True)
class Outlook:
    """One budget: its limit, what is spent against it, and when it runs out."""

    who: str
    """'org' or an agent's name."""
    period: str
    """'total' or 'daily' (UTC)."""
    limit: float
    spent: float
    burn_per_h: float
    runs_out_at: float | None
    """Epoch seconds at the current rate; None if nothing is burning (or it is already out,
    then `left` is 0)."""

    @property
    def left(self) -> float:
        return max(0.0, self.limit - self.spent)

    def as_dict(self) -> dict[str, Any]:
        return {"who": self.who, "period": self.period, "limit_usd": self.limit,
                "spent_usd": round(self.spent, 6), "left_usd": round(self.left, 6),
                "burn_usd_per_h": round(self.burn_per_h, 6), "runs_out_at": self.runs_out_at}  # fmt: skip


@dataclass(frozen=True)
class Forecast:
    at: float
    spent: float
    burn_per_h: float
    """USD per hour, the whole run."""
    agent_burn_per_h: dict[str, float]
    until: float | None
    """The run's deadline (its `--for`), epoch seconds; None when it has none."""
    budgets: list[Outlook]

    @property
    def at_end(self) -> float | None:
        """The run's spend at its deadline, at the current rate."""
        if self.until is None:
            return None
        return self.spent + self.burn_per_h * max(0.0, self.until - self.at) / 3600

    def as_dict(self) -> dict[str, Any]:
        return {
            "spent_usd": round(self.spent, 6), "burn_usd_per_h": round(self.burn_per_h, 6),
            "agent_burn_usd_per_h": {k: round(v, 6) for k, v in self.agent_burn_per_h.items()},
            "until": self.until,
            "at_end_usd": None if self.at_end is None else round(self.at_end, 6),
            "budgets": [b.as_dict() for b in self.budgets],
        }  # fmt: skip


def agent_limit(gateway: GatewayConfig, name: str, budget: float | None) -> LimitConfig | None:
    """The limit the gateway applies to agent `name` (`[gateway.budgets.agents]`, else the
    agent's own `budget` as a total, else `[gateway.budgets.agent]`), or None."""
    limit = gateway.budgets.agents.get(name)
    if limit is None and budget is not None:
        limit = LimitConfig(total_usd=budget)
    if limit is None:
        limit = gateway.budgets.agent
    if limit.total_usd is None and limit.daily_usd is None:
        return None
    return limit


def forecast(
    groups: Sequence[CostGroup],
    config: OrgConfig,
    *,
    now: float,
    started: float,
    until: float | None,
) -> Forecast:
    """The forecast from the run's hourly groups; `started` bounds the burn window."""
    hour_now = int(now) // 3600
    window_start = max(started, (hour_now - WINDOW_HOURS + 1) * 3600.0)
    span_h = max(now - window_start, 60.0) / 3600  # a minute at least: no wild first guess
    midnight = (
        datetime.fromtimestamp(now, UTC)
        .replace(hour=0, minute=0, second=0, microsecond=0)
        .timestamp()
    )
    spent: dict[str, float] = {}
    today: dict[str, float] = {}
    recent: dict[str, float] = {}
    for g in groups:
        spent[g.agent] = spent.get(g.agent, 0.0) + g.cost_usd
        if g.hour * 3600 >= midnight:
            today[g.agent] = today.get(g.agent, 0.0) + g.cost_usd
        if g.hour >= hour_now - WINDOW_HOURS + 1:
            recent[g.agent] = recent.get(g.agent, 0.0) + g.cost_usd
    burn = {agent: usd / span_h for agent, usd in recent.items()}
    total_burn = sum(burn.values())
    outlooks: list[Outlook] = []

    def add(who: str, limit: LimitConfig, total: float, day: float, rate: float) -> None:
        for period, cap, used in (
            ("total", limit.total_usd, total),
            ("daily", limit.daily_usd, day),
        ):
            if cap is None:
                continue
            out = None
            if rate > 0 and used < cap:
                out = now + (cap - used) / rate * 3600
                if period == "daily" and out >= midnight + 86400:
                    out = None  # the day ends first
            outlooks.append(Outlook(who, period, cap, used, rate, out))

    gateway = config.gateway
    if gateway is not None:
        add("org", gateway.budgets.org, sum(spent.values()), sum(today.values()), total_burn)
        for name, cfg in config.agent_names():
            limit = agent_limit(gateway, name, cfg.budget)
            if limit is not None:
                add(name, limit, spent.get(name, 0.0), today.get(name, 0.0), burn.get(name, 0.0))
    return Forecast(now, sum(spent.values()), total_burn, burn, until, outlooks)
