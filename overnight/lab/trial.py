"""The trial's state machine: which statuses exist and which moves between them are legal.

    proposed -> applied -> checked -> running -> measured -> kept | discarded | rejected (holdout)
                        \\-> rejected (integrity or policy)  \\-> crashed | timed_out
    (any non-final state found on restart -> interrupted, and the proposal is re-queued)

Pure data: the store enforces these transitions on every write, the lab drives
them. Knows nothing about git, processes or storage.
"""

from __future__ import annotations

from enum import StrEnum


class TrialStatus(StrEnum):
    proposed = "proposed"
    applied = "applied"
    checked = "checked"
    running = "running"
    measured = "measured"
    kept = "kept"
    discarded = "discarded"
    rejected = "rejected"
    crashed = "crashed"
    timed_out = "timed_out"
    interrupted = "interrupted"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset(
    {
        TrialStatus.kept,
        TrialStatus.discarded,
        TrialStatus.rejected,
        TrialStatus.crashed,
        TrialStatus.timed_out,
        TrialStatus.interrupted,
    }
)

IN_FLIGHT = frozenset(TrialStatus) - FINAL

BASELINE = "baseline"
"""The agent name of a run's first trial: the unchanged code, measured once."""
IMPORTED = "imported"
"""The agent name of trials that ran before overnight (a hand-run autoresearch results.tsv,
see overnight.lab.history): history to learn from, never a ratchet to move."""

_S = TrialStatus
TRANSITIONS: dict[TrialStatus, frozenset[TrialStatus]] = {
    # a proposal that cannot even be applied (bad diff, bad reply) is the agent's crash
    _S.proposed: frozenset({_S.applied, _S.crashed, _S.rejected, _S.interrupted}),
    _S.applied: frozenset({_S.checked, _S.rejected, _S.interrupted}),
    _S.checked: frozenset({_S.running, _S.interrupted}),
    _S.running: frozenset({_S.measured, _S.crashed, _S.timed_out, _S.rejected, _S.interrupted}),
    # measured -> running again while `confirm_runs` (or an outlier's re-run) re-measures a
    # candidate improvement; -> rejected when the hidden holdout says it games the metric
    _S.measured: frozenset({_S.kept, _S.discarded, _S.rejected, _S.running, _S.interrupted}),
}

# What autoresearch's results.tsv calls each final status.
AUTORESEARCH_STATUS: dict[TrialStatus, str] = {
    _S.kept: "keep",
    _S.discarded: "discard",
    _S.crashed: "crash",
    _S.timed_out: "crash",
    _S.rejected: "crash",
    _S.interrupted: "crash",
}


def can_move(current: TrialStatus, new: TrialStatus) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


# The ledger TSV's columns before the recorded values: autoresearch's five (the metric's
# own name second), then overnight's. A recorded value may not take one of these names.
AUTORESEARCH_COLUMNS = ("commit", "{metric}", "memory_gb", "status", "description")
LEDGER_COLUMNS = (
    "trial", "agent", "outcome", "parent", "duration_s", "tokens", "cost_usd", "reason", "log",
)  # fmt: skip
