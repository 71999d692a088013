"""The night's figures: spend and what it bought, per agent, runtime, route, model and day.

Owns `Spend` (one slice of metered calls: tokens, USD, cache reads and what they
saved) and `summarize`, which reads the Store's hourly rollup and the run's trials
and returns `Costs`: the slices, each agent's cost per trial, per keep and per unit
of metric improvement, spend over time, the forecast and advice. Knows nothing
about how the figures are printed or drawn.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from overnight.costs.config import CostConfig
from overnight.costs.prices import PriceTable
from overnight.records import (
    BASELINE,
    IMPORTED,
    AgentRecord,
    CostGroup,
    Event,
    Keep,
    Run,
    Trial,
    TrialStatus,
)


class Reads(Protocol):
    """What of a store the costs read: a `Store`, or `overnight.store.direct`'s snapshot."""

    def cost_groups(self, lab: str, run_id: str | None = None) -> list[CostGroup]: ...
    def trial_counts(self, run_id: str) -> dict[tuple[str, TrialStatus], int]: ...
    def keeps(self, run_id: str) -> list[Keep]: ...
    def agents(self, run_id: str) -> list[AgentRecord]: ...
    def events(
        self, run_id: str, *, after: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None
    ) -> list[Event]: ...
    def last_event(
        self, run_id: str, kinds: Iterable[str], *, agent: str | None = None, after: int = 0
    ) -> Event | None: ...


@dataclass(frozen=True)
class Spend:
    """Metered calls of one slice (an agent, a route, a day, ...)."""

    requests: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    usd: float = 0.0
    unpriced: int = 0
    cache_saved_usd: float = 0.0
    """What the cache reads would have cost at the full input rate, less what they did."""

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens + self.output_tokens + self.cache_read_tokens
            + self.cache_write_tokens
        )  # fmt: skip

    @property
    def tokens_per_usd(self) -> float | None:
        return self.tokens / self.usd if self.usd > 0 else None

    @property
    def cache_share(self) -> float | None:
        """Cache reads as a share of all input tokens."""
        total = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return self.cache_read_tokens / total if total else None

    def __add__(self, other: Spend) -> Spend:
        return Spend(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "usd": round(self.usd, 6),
            "cache_saved_usd": round(self.cache_saved_usd, 6),
            "tokens": self.tokens,
            "tokens_per_usd": _round(self.tokens_per_usd, 1),
            "cache_share": _round(self.cache_share, 4),
        }


def _values(s: Spend) -> tuple[Any, ...]:
    return (s.requests, s.attempts, s.input_tokens, s.output_tokens, s.cache_read_tokens,
            s.cache_write_tokens, s.usd, s.unpriced, s.cache_saved_usd)  # fmt: skip


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class AgentCosts:
    """One agent's spend and what it bought."""

    name: str
    runtime: str
    spend: Spend
    trials: int
    keeps: int
    crashes: int
    improvement: float
    """The metric moved by this agent's keeps, each counted against the lab's best before
    it (always positive: better is better whatever the goal)."""
    last_keep_at: float | None

    @property
    def per_trial(self) -> float | None:
        return self.spend.usd / self.trials if self.trials else None

    @property
    def per_keep(self) -> float | None:
        return self.spend.usd / self.keeps if self.keeps else None

    @property
    def improvement_per_usd(self) -> float | None:
        """How much of the metric each dollar bought."""
        return self.improvement / self.spend.usd if self.spend.usd > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "runtime": self.runtime, **self.spend.as_dict(),
            "trials": self.trials, "keeps": self.keeps, "crashes": self.crashes,
            "improvement": round(self.improvement, 9), "last_keep_at": self.last_keep_at,
            "usd_per_trial": _round(self.per_trial, 6), "usd_per_keep": _round(self.per_keep, 6),
            "improvement_per_usd": _round(self.improvement_per_usd, 9),
        }  # fmt: skip


@dataclass(frozen=True)
class Costs:
    """Everything `overnight costs` shows, at one moment."""

    at: float
    total: Spend
    agents: list[AgentCosts]
    runtimes: dict[str, Spend]
    routes: dict[str, Spend]
    models: dict[str, Spend]
    days: dict[str, Spend]
    series: dict[str, list[tuple[float, float]]]
    """Per agent: (end of each UTC hour with spend, cumulative USD), for the chart."""
    groups: list[CostGroup] = field(repr=False, default_factory=list)

    def agent(self, name: str) -> AgentCosts | None:
        return next((a for a in self.agents if a.name == name), None)


def improvements(keeps: Iterable[Keep], goal: str) -> dict[int, float]:
    """Each keep's gain over the lab's best before it, by trial number (the baseline and an
    imported history set the bar but gain nothing); `goal` is the lab's ('minimize' or
    'maximize')."""
    best: float | None = None
    out: dict[int, float] = {}
    for k in sorted((k for k in keeps if k.metric is not None), key=lambda k: (k.at, k.number)):
        assert k.metric is not None
        if best is None:
            best = k.metric
            continue
        gain = best - k.metric if goal == "minimize" else k.metric - best
        if gain > 0:
            best = k.metric
            if k.agent not in (BASELINE, IMPORTED):
                out[k.number] = gain
    return out


def keeps_of(trials: Iterable[Trial]) -> list[Keep]:
    return [
        Keep(t.number, t.agent, t.metric, t.finished_at or t.updated_at)
        for t in trials
        if t.status is TrialStatus.kept
    ]


def _saved_per_token(prices: PriceTable, upstream: str, model: str, day: int) -> float:
    """What a cache read saved against the full input rate, USD per token, on UTC day
    `day` (days since the epoch); 0 for a model without a price."""
    price = prices.lookup(upstream, model, datetime.fromtimestamp(day * 86400, UTC).date())
    return 0.0 if price is None else (price.input - price.cache_read) / 1e6


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def summarize(
    store: Reads,
    config: CostConfig,
    run: Run,
    *,
    trials: Sequence[Trial] | None = None,
    runtimes: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Costs:
    """The run's costs from the store's rollup and its trials (passed in if already read)."""
    prices = PriceTable(config.prices)
    groups = store.cost_groups(run.lab, run.id)
    if trials is None:  # the counts from SQL, and only the keeps read whole
        counts = store.trial_counts(run.id)
        kept = store.keeps(run.id)
    else:
        counts = dict(Counter((t.agent, t.status) for t in trials))
        kept = keeps_of(trials)
    if runtimes is None:
        runtimes = {a.name: a.runtime for a in store.agents(run.id)}
    # The hours of a day summed first (a million attempts are some thousands of hourly
    # groups, and some hundreds of daily ones), then each day's into every slice it is in.
    daily: dict[tuple[str, str, str, str, int], list[float]] = {}
    hourly: dict[str, dict[int, float]] = {}
    for g in groups:
        where = (g.agent, g.route, g.upstream, g.model, g.hour // 24)
        acc = daily.get(where)
        if acc is None:
            acc = daily[where] = [0, 0, 0, 0, 0, 0, 0.0, 0, 0.0]
        acc[0] += g.requests
        acc[1] += g.attempts
        acc[2] += g.input_tokens
        acc[3] += g.output_tokens
        acc[4] += g.cache_read_tokens
        acc[5] += g.cache_write_tokens
        acc[6] += g.cost_usd
        acc[7] += g.unpriced
        per_hour = hourly.get(g.agent)
        if per_hour is None:
            per_hour = hourly[g.agent] = {}
        per_hour[g.hour] = per_hour.get(g.hour, 0.0) + g.cost_usd
    sums: dict[tuple[str, str], list[float]] = {}
    days: dict[int, str] = {}
    for (agent, route, upstream, model, d), values in daily.items():
        if values[4]:
            values[8] = values[4] * _saved_per_token(prices, upstream, model, d)
        day = days.get(d)
        if day is None:
            day = days[d] = _day(d)
        for slot in (
            ("total", ""),
            ("agent", agent),
            ("runtime", runtimes.get(agent, "?")),
            ("route", route),
            ("model", f"{upstream}/{model}"),
            ("day", day),
        ):
            acc = sums.get(slot)
            if acc is None:
                sums[slot] = list(values)
            else:
                for i, v in enumerate(values):
                    acc[i] += v
    by: dict[str, dict[str, Spend]] = {k: {} for k in ("agent", "runtime", "route", "model", "day")}
    total = Spend()
    for (kind, key), acc in sums.items():
        spend = Spend(
            int(acc[0]), int(acc[1]), int(acc[2]), int(acc[3]), int(acc[4]), int(acc[5]),
            acc[6], int(acc[7]), acc[8],
        )  # fmt: skip
        if kind == "total":
            total = spend
        else:
            by[kind][key] = spend
    gains = improvements(kept, config.goal)
    names = sorted(set(runtimes) - {BASELINE, IMPORTED} | set(by["agent"]))
    mine: dict[str, list[Keep]] = {}
    for k in kept:
        mine.setdefault(k.agent, []).append(k)
    agents = []
    for name in names:
        own = mine.get(name, [])
        agents.append(
            AgentCosts(
                name=name,
                runtime=runtimes.get(name, "?"),
                spend=by["agent"].get(name, Spend()),
                trials=sum(n for (a, s), n in counts.items() if a == name and s.final),
                keeps=counts.get((name, TrialStatus.kept), 0),
                crashes=counts.get((name, TrialStatus.crashed), 0),
                improvement=sum(gains.get(t.number, 0.0) for t in own),
                last_keep_at=max((k.at for k in own), default=None),
            )
        )
    series = {}
    for name, per_hour in hourly.items():
        running, points = 0.0, []
        for hour in sorted(per_hour):
            running += per_hour[hour]
            points.append((float(min((hour + 1) * 3600, now or time.time())), running))
        series[name] = points
    return Costs(
        at=time.time() if now is None else now,
        total=total,
        agents=agents,
        runtimes=by["runtime"],
        routes=by["route"],
        models=by["model"],
        days=dict(sorted(by["day"].items())),
        series=series,
        groups=groups,
    )
