"""The ratchet's judgement: does a measured candidate beat the best by enough to keep it.

Pure arithmetic over metrics and the lab's goal; knows nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from overnight.org.config import Goal


def improves(candidate: float, best: float | None, goal: Goal, min_delta: float) -> bool:
    """True when `candidate` is better than `best` by more than `min_delta`."""
    if math.isnan(candidate) or math.isinf(candidate):
        return False
    if best is None:
        return True
    gain = best - candidate if goal is Goal.minimize else candidate - best
    return gain > min_delta


def gain(candidate: float, best: float | None, goal: Goal) -> float:
    """How much better `candidate` is than `best`, as a fraction of |best| (positive =
    better, whatever the goal); 0 without a best or when the best is 0."""
    if best is None or best == 0:
        return 0.0
    return (best - candidate if goal is Goal.minimize else candidate - best) / abs(best)


def better(a: float, b: float, goal: Goal) -> bool:
    return a < b if goal is Goal.minimize else a > b


def combined(metrics: Sequence[float]) -> float:
    """One figure for a candidate measured several times (confirm_runs): the mean."""
    return sum(metrics) / len(metrics)
