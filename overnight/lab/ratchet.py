"""The ratchet's judgement: does a measured candidate beat the best by enough to keep it.

Owns the arithmetic of a keep: better or not by the lab's goal, by how much, the
noise floor measured from repeated runs of one commit, and when an improvement is
an outlier worth measuring again. Pure arithmetic over metrics and the lab's
goal; knows nothing about trials, runs or the store.
"""

from __future__ import annotations

import math
import statistics
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


NOISE_SIGMAS = 2.0
"""The noise floor is this many standard deviations of the baseline's runs: two runs of
one commit differ by more than 2σ about 16% of the time (normal noise), a candidate
beating the best by more than 2σ of its own noise far less often."""
OUTLIER_FACTOR = 3.0
"""An improvement more than this many times the reference (see `outlier`) is re-run."""


def step(candidate: float, best: float | None, goal: Goal) -> float:
    """How much better `candidate` is than `best`, in the metric's units (positive =
    better, whatever the goal); 0 without a best."""
    if best is None:
        return 0.0
    return best - candidate if goal is Goal.minimize else candidate - best


def noise_floor(runs: Sequence[float]) -> tuple[float, float]:
    """(σ, floor) of repeated runs of one commit: their sample standard deviation, and
    NOISE_SIGMAS times it. A deterministic metric gives (0, 0)."""
    sigma = statistics.stdev(runs) if len(runs) >= 2 else 0.0
    return sigma, NOISE_SIGMAS * sigma


def outlier(improvement: float, largest: float, floor: float) -> bool:
    """Whether an improvement is far beyond anything seen so far: more than
    OUTLIER_FACTOR times the larger of the largest improvement kept so far and the noise
    floor. Never while both are 0 (the first keep of a deterministic metric): there is
    nothing yet to call it far from."""
    reference = max(largest, floor)
    return reference > 0 and improvement > OUTLIER_FACTOR * reference
