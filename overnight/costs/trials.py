"""What each trial cost: a run's metered gateway calls shared out among its trials.

Owns the rule that attributes a call to a trial. Knows nothing about prices (the
gateway priced each call as it was made) or how the figures are shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from overnight.records import Trial
from overnight.store import Store


@dataclass(frozen=True)
class TrialCost:
    tokens: int
    cost_usd: float | None
    """None when nothing priced was spent; partial when some calls were unpriced."""
    unpriced: bool


def trial_costs(store: Store, run_id: str) -> dict[int, TrialCost]:
    """What each trial cost in LLM calls through the gateway.

    A call tagged with a trial (`x-overnight-trial`, as the llm runtime sends) counts
    for that trial. An untagged call (an external agent thinking before it runs
    `overnight try`) counts for the agent's next trial: the price of coming up with it.
    """
    trials = sorted(store.trials(run_id), key=lambda t: t.created_at)
    by_agent: dict[str, list[Trial]] = {}
    for t in trials:
        by_agent.setdefault(t.agent, []).append(t)
    numbers = {str(t.number): t.number for t in trials}
    tokens: Counter[int] = Counter()
    cost: dict[int, float] = {}
    unpriced: set[int] = set()
    for row in store.usage_rows(run_id):
        number = numbers.get(row.trial) if row.trial is not None else None
        if number is None:
            later = [t for t in by_agent.get(row.agent, []) if t.created_at >= row.started_at]
            if not later:
                continue  # thinking toward a trial that has not started yet
            number = later[0].number
        tokens[number] += row.tokens
        if row.cost_usd is None:
            unpriced.add(number)
        else:
            cost[number] = cost.get(number, 0.0) + row.cost_usd
    return {n: TrialCost(tokens[n], cost.get(n), n in unpriced) for n in set(tokens) | unpriced}
