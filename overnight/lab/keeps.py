"""Keeps that can be trusted: what a run's kept trials say about the next one.

Owns the questions the lab asks of the store before it keeps a measured trial:
which kept trial is the best, the largest improvement kept so far (an outlier is
measured against it), the reference the hidden holdout compares with, which
`[lab] constraints` a candidate breaks, and why a discarded one was not kept.
The arithmetic itself is `ratchet`'s. Knows nothing about git, runners or agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overnight.lab.ratchet import better, step
from overnight.org import OrgConfig, constraints
from overnight.org.config import MEMORY, Goal, LabConfig
from overnight.records import BASELINE, IMPORTED, Run, Trial, TrialStatus
from overnight.store import Store


def best_trial(store: Store, run: Run, config: OrgConfig) -> Trial | None:
    """The best kept trial of a run (the baseline counts; an imported history does not:
    its numbers were measured elsewhere), or None."""
    kept = [t for t in store.trials(run.id, statuses=[TrialStatus.kept]) if t.agent != IMPORTED]
    if not kept:
        return None
    best = kept[0]
    for trial in kept[1:]:
        if trial.metric is not None and (
            best.metric is None or better(trial.metric, best.metric, config.lab.goal)
        ):
            best = trial
    return best


def largest_improvement(store: Store, run_id: str, goal: Goal) -> float:
    """The largest step an agent's keep made over the trial it started from (0 if none)."""
    kept = store.trials(run_id, statuses=[TrialStatus.kept])
    metric_of = {t.candidate_commit: t.metric for t in kept}
    return max(
        (
            step(t.metric, metric_of.get(t.parent_commit), goal)
            for t in kept
            if t.agent != BASELINE and t.metric is not None
        ),
        default=0.0,
    )


def holdout_reference(store: Store, run_id: str, goal: Goal) -> tuple[float | None, float | None]:
    """(metric, holdout metric) of the best kept trial the holdout measured."""
    found: Trial | None = None
    for t in store.trials(run_id, statuses=[TrialStatus.kept]):
        if t.holdout_metric is None or t.metric is None:
            continue
        if found is None or better(t.metric, found.metric or 0.0, goal):
            found = t
    return (found.metric, found.holdout_metric) if found else (None, None)


def broken_constraint(lab: LabConfig, metric: float, memory: Mapping[str, Any]) -> str | None:
    """The first `[lab] constraints` the measured values break, said plainly, or None.
    `memory` is what `experiment.memory_fields` gives."""
    values = {**memory["recorded"], lab.metric: metric}
    if memory["memory_gb"] is not None:
        values[MEMORY] = memory["memory_gb"]
    for text in lab.constraints:
        broken = constraints.parse(text).violation(values)
        if broken:
            return broken
    return None


def discard_reason(
    value: float, best: float | None, min_delta: float, runs: int, lab: LabConfig
) -> str:
    """Why `value` (the mean of `runs` runs) is not kept against `best`."""
    confirm = f" (mean of {runs} runs)" if runs > 1 else ""
    ahead = step(value, best, lab.goal)
    if ahead > 0 and not isinstance(lab.min_delta, int | float):
        return (
            f"within noise (±{min_delta:.3g}): {value:.6g}{confirm} beats the best {best:.6g} "
            f"by only {ahead:.3g}"
        )
    delta = f" by more than {min_delta:g}" if min_delta else ""
    return f"{value:.6g}{confirm} does not beat the best {best:.6g}{delta}"
