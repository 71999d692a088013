"""Burn rate and forecast: what the night will cost by its end, and when budgets run out.

Owns the burn rate (USD per hour over the last full hour and the current one, from
the store's hourly rollup), the projection to the run's `--for` deadline, and the
outlook of each gateway budget (org, agent, per agent; daily and total): spent,
left, and when it runs out at the current rate; and how often a running lab records
its forecast (`record_every`), so the morning report can hold what was forecast at
each point of the night against what was spent. Knows nothing about enforcing a
budget (the gateway does) or showing one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from overnight.costs.config import CostConfig, Limit
from overnight.records import CostGroup

WINDOW_HOURS = 2
"""The burn rate is the spend of the current UTC hour and the one before it, over the time
they cover (the run's start, if later): about the last one to two hours."""

RECORD_EVERY_S = 600.0
RECORDS_PER_RUN = 10
"""A running lab records its forecast (a `cost.forecast` event) every tenth of its `--for`,
at most `RECORD_EVERY_S` apart (that often without a `--for`): a read of the hourly rollup
and one event, some fifty times in an eight-hour night."""


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

    def record(self) -> dict[str, Any]:
        """What a `cost.forecast` event keeps of it: the run's spend and rate then, and
        what that rate made of the deadline."""
        return {
            "spent_usd": round(self.spent, 6), "burn_usd_per_h": round(self.burn_per_h, 6),
            "until": self.until, "at_end_usd": None if self.at_end is None else round(self.at_end, 6),
        }  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "spent_usd": round(self.spent, 6), "burn_usd_per_h": round(self.burn_per_h, 6),
            "agent_burn_usd_per_h": {k: round(v, 6) for k, v in self.agent_burn_per_h.items()},
            "until": self.until,
            "at_end_usd": None if self.at_end is None else round(self.at_end, 6),
            "budgets": [b.as_dict() for b in self.budgets],
        }  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    """A forecast a running lab recorded (a `cost.forecast` event, `Forecast.record`)."""

    at: float
    spent: float
    burn_per_h: float
    until: float | None
    at_end: float | None

    @classmethod
    def of(cls, at: float, payload: Mapping[str, Any]) -> Recorded:
        return cls(at, float(payload.get("spent_usd") or 0.0),
                   float(payload.get("burn_usd_per_h") or 0.0), payload.get("until"),
                   payload.get("at_end_usd"))  # fmt: skip

    def by(self, end: float) -> float:
        """What the spend would be by `end` at the rate of then."""
        return self.spent + self.burn_per_h * max(0.0, end - self.at) / 3600

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "spent_usd": self.spent, "burn_usd_per_h": self.burn_per_h,
                "until": self.until, "at_end_usd": self.at_end}  # fmt: skip


def record_every(seconds: float | None) -> float:
    """How far apart a run allowed `seconds` (its `--for`; None without one) records its
    forecast: see `RECORDS_PER_RUN`; a second at least."""
    if seconds is None:
        return RECORD_EVERY_S
    return max(1.0, min(RECORD_EVERY_S, seconds / RECORDS_PER_RUN))


def forecast(
    groups: Sequence[CostGroup],
    config: CostConfig,
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

    def add(who: str, limit: Limit, total: float, day: float, rate: float) -> None:
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

    if config.gateway:
        add("org", config.org, sum(spent.values()), sum(today.values()), total_burn)
        for name, limit in config.agents:
            if limit is not None:
                add(name, limit, spent.get(name, 0.0), today.get(name, 0.0), burn.get(name, 0.0))
    return Forecast(now, sum(spent.values()), total_burn, burn, until, outlooks)
