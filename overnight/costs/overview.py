"""One look at a run's costs: the figures, the forecast (and those recorded while the run
ran), the anomalies and the advice.

Owns `Overview` and its JSON form, the one answer `overnight costs`, `overnight
status`, the Costs page and the morning report all read, and the names of the events
that tell of costs. Knows nothing about how any of them shows it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overnight.costs.advice import advise
from overnight.costs.config import CostConfig
from overnight.costs.forecast import Forecast, Recorded, forecast
from overnight.costs.summary import Costs, Reads, summarize
from overnight.records import Event, Run, Trial

if TYPE_CHECKING:
    from overnight.org import OrgConfig

ANOMALY = "cost.anomaly"
FORECAST = "cost.forecast"
"""The forecast as a running lab recorded it (`Forecast.record`, every `record_every`)."""
ALLOWANCE = "run.allowance"
"""The event `overnight run` writes with its `--for` deadline (`until`, epoch seconds)."""


@dataclass(frozen=True)
class Overview:
    costs: Costs
    forecast: Forecast
    anomalies: list[Event]
    advice: list[str]
    forecasts: list[Recorded]
    """Those recorded while the run ran, oldest first."""

    def as_dict(self) -> dict[str, Any]:
        c = self.costs
        return {
            "at": c.at,
            "total": c.total.as_dict(),
            "agents": [a.as_dict() for a in c.agents],
            "runtimes": {k: v.as_dict() for k, v in sorted(c.runtimes.items())},
            "routes": {k: v.as_dict() for k, v in sorted(c.routes.items())},
            "models": {k: v.as_dict() for k, v in sorted(c.models.items())},
            "days": {k: v.as_dict() for k, v in c.days.items()},
            "forecast": self.forecast.as_dict(),
            "anomalies": [
                {"at": e.at, "agent": e.agent, "trial": e.trial, **dict(e.payload)}
                for e in self.anomalies
            ],
            "advice": self.advice,
            "forecasts": [r.as_dict() for r in self.forecasts],
        }


def overview(
    store: Reads,
    config: OrgConfig | CostConfig,
    run: Run,
    *,
    trials: Sequence[Trial] | None = None,
    now: float | None = None,
) -> Overview:
    now = time.time() if now is None else now
    config = config if isinstance(config, CostConfig) else CostConfig.of(config)
    costs = summarize(store, config, run, trials=trials, now=now)
    started, until = _allowance(store, run)
    outlook = forecast(costs.groups, config, now=now, started=started, until=until)
    # a kind at a time: each is a walk of the (run, kind) index, where asking for both at
    # once has SQLite walk every event of the run
    anomalies = store.events(run.id, kinds=[ANOMALY], limit=10_000)
    recorded = [Recorded.of(e.at, e.payload)
                for e in store.events(run.id, kinds=[FORECAST], limit=10_000)]  # fmt: skip
    return Overview(costs, outlook, anomalies, advise(costs, started=started), recorded)


def _allowance(store: Reads, run: Run) -> tuple[float, float | None]:
    """When the run (last) started and its `--for` deadline, if it has one."""
    allowance = store.last_event(run.id, [ALLOWANCE])
    if allowance is None:
        return run.created_at, None
    return allowance.at, allowance.payload.get("until")


def run_forecast(store: Reads, config: OrgConfig, run: Run, now: float | None = None) -> Forecast:
    """The forecast alone (for `overnight status`): the rollup, not the trials, is read."""
    started, until = _allowance(store, run)
    groups = store.cost_groups(run.lab, run.id)
    return forecast(groups, CostConfig.of(config), now=time.time() if now is None else now, started=started,
                    until=until)  # fmt: skip
