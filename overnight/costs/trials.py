"""What each trial cost: a run's metered gateway calls shared out among its trials.

Owns the rule that attributes a call to a trial. Knows nothing about prices (the
gateway priced each call as it was made) or how the figures are shown.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from overnight.records import UsageRow
from overnight.store import Store


@dataclass(frozen=True)
class TrialCost:
    tokens: int
    cost_usd: float | None
    """None when nothing priced was spent; partial when some calls were unpriced."""
    unpriced: bool


class Started(Protocol):
    """What the rule needs of a trial: its number, agent and when it began."""

    @property
    def number(self) -> int: ...
    @property
    def agent(self) -> str: ...
    @property
    def created_at(self) -> float: ...


class TrialCosts:
    """Shares a run's metered calls out among its trials, a call at a time.

    A call tagged with a trial (`x-overnight-trial`, as the llm runtime sends) counts
    for that trial. An untagged call (an external agent thinking before it runs
    `overnight try`) counts for the agent's next trial: the price of coming up with it.
    """

    def __init__(self, trials: Iterable[Started]) -> None:
        self._numbers: dict[str, int] = {}
        self._starts: dict[str, tuple[list[float], list[int]]] = {}
        for t in sorted(trials, key=lambda t: t.created_at):
            self._numbers[str(t.number)] = t.number
            at, numbers = self._starts.setdefault(t.agent, ([], []))
            at.append(t.created_at)
            numbers.append(t.number)
        self._tokens: Counter[int] = Counter()
        self._cost: dict[int, float] = {}
        self._unpriced: set[int] = set()

    def add(self, row: UsageRow) -> None:
        number = self._numbers.get(row.trial) if row.trial is not None else None
        if number is None and row.agent in self._starts:
            at, numbers = self._starts[row.agent]
            i = bisect.bisect_left(at, row.started_at)
            number = numbers[i] if i < len(numbers) else None
        if number is None:
            return  # thinking toward a trial that has not started yet
        self._tokens[number] += row.tokens
        if row.cost_usd is None:
            self._unpriced.add(number)
        else:
            self._cost[number] = self._cost.get(number, 0.0) + row.cost_usd

    def result(self) -> dict[int, TrialCost]:
        numbers = set(self._tokens) | self._unpriced
        return {
            n: TrialCost(self._tokens[n], self._cost.get(n), n in self._unpriced) for n in numbers
        }


def trial_costs(store: Store, run_id: str) -> dict[int, TrialCost]:
    """What each trial cost in LLM calls through the gateway (see `TrialCosts`)."""
    costs = TrialCosts(store.trials(run_id))
    for row in store.usage_rows(run_id):
        costs.add(row)
    return costs.result()
