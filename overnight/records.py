"""The plain records overnight keeps: the trial's states and the frozen snapshots the store hands out.

    proposed -> applied -> checked -> running -> measured -> kept | discarded | rejected (holdout)
                        \\-> rejected (integrity or policy)  \\-> crashed | timed_out
    (any non-final state found on restart -> interrupted, and the proposal is re-queued)

Pure data, and the bottom of the house: imports nothing else of overnight, so
the store can keep these records (and enforce the trial's transitions on every
write) without knowing the lab that drives them, as optuna's storages import
`TrialState` and not the trial logic. Knows nothing about git, processes,
storage or the configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

# -- the trial's states: the store enforces these transitions on every write, the lab
# drives them ---------------------------------------------------------------------


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


# -- the frozen records the store hands out: immutable snapshots, read again to see later
# writes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One unattended session of a lab: from a base commit, resumable after any stop."""

    id: str
    lab: str
    base_commit: str
    protected: Mapping[str, str]
    config: Mapping[str, Any]
    created_at: float
    noise_floor: Mapping[str, Any] | None = None
    """Measured at the run's start: {"runs": [...], "sigma": σ, "min_delta": 2σ}."""


@dataclass(frozen=True)
class AgentRecord:
    """An agent of a run, with where its ratchet stands."""

    run_id: str
    name: str
    runtime: str
    branch: str
    worktree: str
    best_commit: str
    best_metric: float | None = None
    best_trial: int | None = None
    state: str = "idle"
    state_since: float | None = None
    session: str | None = None
    """An external CLI agent's conversation id, to resume it after a restart."""


@dataclass(frozen=True)
class Trial:
    """One attempt, as last written."""

    id: int
    run_id: str
    number: int
    agent: str
    status: TrialStatus
    parent_commit: str
    description: str
    proposal: Mapping[str, Any]
    created_at: float
    updated_at: float
    candidate_commit: str | None = None
    metric: float | None = None
    metrics: tuple[float, ...] = ()
    diff: str | None = None
    reason: str | None = None
    log_path: str | None = None
    log_tail: str | None = None
    pid: int | None = None
    requeued_from: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    holdout_metric: float | None = None
    """The hidden holdout's metric (a candidate that would become the lab's best)."""
    flag: str | None = None
    """Why a keep looks suspect: its metric improved and its holdout did not."""
    recorded: Mapping[str, float] = field(default_factory=dict)
    """Secondary `name: value` lines of the run (`[lab] record`, and `peak_vram_mb`)."""
    memory_gb: float | None = None
    """Peak memory: a printed `peak_vram_mb` / 1024 (autoresearch's `memory_gb`), else the
    peak RSS of the run's process tree in GiB."""
    peak_rss_mb: float | None = None
    """Peak resident memory of the run's process tree as the runner measured it, in MiB."""
    # (ov_trials.tokens and .cost_usd are unused: a trial's cost is read from the gateway's
    # attempts, see overnight.costs.trials.trial_costs)


@dataclass(frozen=True)
class UsageRow:
    """One gateway attempt's share of the bill."""

    agent: str
    trial: str | None
    started_at: float
    tokens: int
    """input + cache read + cache write + output."""
    cost_usd: float | None
    """None when unpriced."""


@dataclass(frozen=True)
class Keep:
    """A kept trial, reduced to what its gain and its cost need."""

    number: int
    agent: str
    metric: float | None
    at: float
    """When it was kept (finished)."""


@dataclass(frozen=True)
class CostGroup:
    """Metered attempts summed for one agent, route, upstream and model in one UTC hour."""

    run_id: str
    """'' for attempts made outside any run."""
    agent: str
    route: str
    upstream: str
    model: str
    hour: int
    """Hours since the epoch (UTC): `started_at // 3600`."""
    attempts: int
    requests: int
    """Attempts that were a request's first try (a failover is one request, two attempts)."""
    input_tokens: int
    """Billed at the full input rate: cache reads and writes are counted apart."""
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    """Priced USD (unpriced attempts add nothing)."""
    unpriced: int
    """Attempts whose model has no price."""


@dataclass(frozen=True)
class Event:
    """A frozen, typed record of something that happened, in the order it was written."""

    id: int
    run_id: str
    at: float
    kind: str
    agent: str | None = None
    trial: int | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """One link of a lab's audit chain, exactly as stored (see overnight.governance.audit)."""

    lab: str
    seq: int
    """1, 2, 3, ... within the lab's chain, without gaps."""
    at: float
    kind: str
    actor: str
    subject: str
    payload: str
    """Canonical JSON text, hashed as it is stored."""
    correlation: str | None
    prev_hash: str
    hash: str

    def data(self) -> Any:
        """The payload, parsed."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class AuditCheckpoint:
    """A signed statement that the chain held `hash` at `seq` (HMAC-SHA256 with key `key_id`)."""

    lab: str
    seq: int
    hash: str
    at: float
    key_id: str
    mac: str


ApprovalStatus = Literal["pending", "approved", "denied", "expired"]


@dataclass(frozen=True)
class Approval:
    """A request for a human's yes or no on one action of one agent."""

    id: str
    """Short and typable: `overnight approve k7q2mx`."""
    lab: str
    run_id: str
    agent: str
    action: Mapping[str, Any]
    reason: str
    """Why it needs a human (the rule or risk that asked)."""
    risk: float | None
    correlation: str | None
    created_at: float
    expires_at: float
    status: ApprovalStatus = "pending"
    answered_by: str | None = None
    note: str | None = None
    answered_at: float | None = None
    """For `expired`, the moment it expired."""


@dataclass(frozen=True)
class ImportedTrial:
    """A trial that ran elsewhere (a hand-run autoresearch loop), as `import_trials` takes it."""

    agent: str
    status: TrialStatus
    """Final: kept, discarded or crashed."""
    parent_commit: str
    candidate_commit: str
    description: str
    proposal: Mapping[str, Any]
    """Where it came from, e.g. {"imported": "results.tsv", "line": 7}."""
    metric: float | None = None
    memory_gb: float | None = None
    diff: str | None = None


# The columns of one metered gateway attempt (see overnight.gateway.meter.Attempt).
ATTEMPT_FIELDS = (
    "request_id", "attempt", "agent", "trial", "route", "upstream", "model", "credential",
    "client_protocol", "upstream_protocol", "stream", "outcome", "status", "error",
    "started_at", "latency_s", "ttft_s", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_estimated", "cost_usd", "unpriced",
)  # fmt: skip


# -- notifications (overnight.notify): what was told to whom, and how that went ----------------

NotificationStatus = Literal["queued", "delivered", "failed"]


@dataclass(frozen=True)
class Notice:
    """Something a person should hear about, for one sink, before it is stored."""

    sink: str
    """The `[[notify]]` sink's name (never its address: that may hold a token)."""
    kind: str
    """What happened, as a sink's `events = [...]` names it: `best`, `crash`, `stopped`, ..."""
    title: str
    text: str
    run_id: str | None = None
    link: str | None = None
    """A path in the command center (`/lab#trial-12`), or a file (the morning report)."""
    event_id: int | None = None
    """The store event it tells of (None for a test message or a silence)."""


@dataclass(frozen=True)
class Notification:
    """A notice as stored, with how its delivery went: `queued` until its sink answers,
    then `delivered` or `failed` (with why). Several notices that one message carried (a
    digest) share its `message`, the id of the first of them."""

    id: int
    lab: str
    notice: Notice
    created_at: float
    status: NotificationStatus = "queued"
    tries: int = 0
    answer: str | None = None
    """What the sink said: `HTTP 200`, `250 OK`, ..."""
    error: str | None = None
    """Why the last try failed."""
    message: int | None = None
    updated_at: float | None = None
