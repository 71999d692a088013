"""The Store contract: what every backend keeps, and the rules it keeps them by.

The records it hands out (`Trial`, `Run`, `Event`, ...) are plain frozen types of
`overnight.records`, which knows nothing of the store.

Rules every implementation keeps (the contract tests, overnight/testing/store_contract.py,
check them against SQLite and PostgreSQL alike in tests/store/test_store.py):

- **Thread- and process-safe.** Any method may be called from any thread, and
  several processes may share one database; each call is its own transaction.
- **Records are immutable snapshots.** A returned `Trial` never changes; read
  again to see later writes.
- **Write-ahead.** A method returns only after its write is durable against a
  crash of the calling process, so the caller may then start the side effect
  the write announces.
- **Transitions are enforced.** `update_trial` refuses a move the trial state
  machine (`overnight.records`) does not allow, and writes the matching
  `trial.<status>` event in the same transaction as the change.
- **Append-only history.** Events are never updated or deleted; trial numbers
  are unique and gapless within a run.
- **Imported history enters finished.** `import_trials` appends trials that ran
  elsewhere (a hand-run autoresearch `results.tsv`) already in their final status,
  numbered after the run's last, each with its `trial.<status>` event, in one
  transaction: a history is imported whole or not at all.
- **Ids become visible in order.** Event ids and attempt ids are committed in
  id order, so a reader that has seen id N never later sees a new id below N:
  a follower may remember the last id it read and miss nothing.
- **One audit chain per lab, never forked.** `append_audit` reads the chain's
  head and inserts after it in one write transaction, serialized across
  threads and processes; two records never share a seq.
- **An approval is answered once.** `answer_approval` and `expire_approvals`
  move only a pending approval, atomically, so of two answers at once exactly
  one wins; each move writes an `approval.<status>` event in the same
  transaction (as `add_approval` writes `approval.requested`).
- **A notifier neither repeats nor skips.** `add_notifications` stores notices and
  moves the lab's notify cursor in one transaction, and refuses (writes nothing)
  when the cursor is not where the caller last saw it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from overnight.records import (
    ATTEMPT_FIELDS,
    AgentRecord,
    Approval,
    ApprovalStatus,
    AuditCheckpoint,
    AuditRecord,
    CostGroup,
    Event,
    ImportedTrial,
    Keep,
    Notice,
    Notification,
    NotificationStatus,
    Run,
    Trial,
    TrialStatus,
    UsageRow,
)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

# The trial fields `update_trial` may set alongside a status change.
TRIAL_FIELDS = frozenset(
    {
        "candidate_commit",
        "description",
        "proposal",
        "metric",
        "metrics",
        "diff",
        "reason",
        "log_path",
        "log_tail",
        "pid",
        "requeued_from",
        "started_at",
        "finished_at",
        "duration_s",
        "holdout_metric",
        "flag",
        "recorded",
        "memory_gb",
        "peak_rss_mb",
    }
)


class TransitionError(Exception):
    """A trial was asked to make a move its state machine forbids (our bug, not the user's)."""


class Store(abc.ABC):
    """Where everything overnight knows is kept. See the module docstring for the rules."""

    url: str

    @abc.abstractmethod
    def create_run(
        self,
        run_id: str,
        lab: str,
        base_commit: str,
        protected: Mapping[str, str],
        config: Mapping[str, Any],
    ) -> Run: ...

    @abc.abstractmethod
    def get_run(self, run_id: str) -> Run | None: ...

    @abc.abstractmethod
    def latest_run(self, lab: str) -> Run | None: ...

    @abc.abstractmethod
    def labs(self) -> list[str]:
        """The name of every lab with a run here, sorted."""

    @abc.abstractmethod
    def set_noise_floor(self, run_id: str, floor: Mapping[str, Any]) -> Run:
        """Keep the noise floor measured at the run's start, with its `lab.noise_floor`
        event, in one transaction; returns the run as it now stands."""

    @abc.abstractmethod
    def put_agent(self, agent: AgentRecord) -> None:
        """Insert the agent, or leave an existing one (and its ratchet) untouched."""

    @abc.abstractmethod
    def agents(self, run_id: str) -> list[AgentRecord]: ...

    @abc.abstractmethod
    def set_agent_best(
        self,
        run_id: str,
        agent: str,
        commit: str,
        metric: float | None,
        trial: int | None,
        *,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> Event | None:
        """Move an agent's ratchet outside a keep (the baseline, a repair on resume, a move
        to the lab's best), and write `event` (kind, payload), which says why, in the same
        transaction; returns that event."""

    @abc.abstractmethod
    def set_agent_state(self, run_id: str, agent: str, state: str, **detail: Any) -> None:
        """Record an agent's state (working / idle / ...) and emit an `agent.state` event."""

    @abc.abstractmethod
    def set_agent_session(self, run_id: str, agent: str, session: str | None) -> None:
        """Remember the conversation an external agent resumes after a restart."""

    @abc.abstractmethod
    def add_trial(
        self,
        run_id: str,
        agent: str,
        parent_commit: str,
        description: str,
        proposal: Mapping[str, Any],
        requeued_from: int | None = None,
    ) -> Trial:
        """Create a trial in `proposed` with the run's next number."""

    @abc.abstractmethod
    def update_trial(self, trial_id: int, status: TrialStatus, **fields: Any) -> Trial:
        """Move a trial to `status`, setting `fields` (a subset of TRIAL_FIELDS).

        Moving to `kept` also advances the agent's ratchet to the trial's
        candidate commit and metric, in the same transaction.
        """

    @abc.abstractmethod
    def import_trials(self, run_id: str, trials: Sequence[ImportedTrial]) -> list[Trial]:
        """Append trials that ran elsewhere, already final, numbered after the run's last,
        each with a `trial.<status>` event whose payload says `imported`; all or nothing."""

    @abc.abstractmethod
    def get_trial(self, trial_id: int) -> Trial: ...

    @abc.abstractmethod
    def trials(
        self,
        run_id: str,
        *,
        agent: str | None = None,
        statuses: Iterable[TrialStatus] | None = None,
        last: int | None = None,
    ) -> list[Trial]:
        """Trials of a run in number order; with `last`, only the last that many."""

    @abc.abstractmethod
    def trial_counts(self, run_id: str) -> dict[tuple[str, TrialStatus], int]:
        """How many trials of the run each agent has in each status."""

    @abc.abstractmethod
    def keeps(self, run_id: str) -> list[Keep]:
        """The run's kept trials (the baseline's included), in number order."""

    @abc.abstractmethod
    def append_event(
        self,
        run_id: str,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        agent: str | None = None,
        trial: int | None = None,
    ) -> Event: ...

    @abc.abstractmethod
    def events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int = 1000,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        """Events with id > `after` (of one of `kinds`, when given), oldest first."""

    @abc.abstractmethod
    def last_event(
        self, run_id: str, kinds: Iterable[str], *, agent: str | None = None, after: int = 0
    ) -> Event | None:
        """The newest event of one of `kinds` (of `agent`, when given) with id > `after`."""

    @abc.abstractmethod
    def lab_events(self, lab: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        """Events of every run of `lab` with id > `after`, oldest first."""

    # gateway ---------------------------------------------------------------

    @abc.abstractmethod
    def add_key_hash(self, lab: str, agent: str, key_hash: str) -> None:
        """Remember a virtual key by its sha256 (the key itself is never stored)."""

    @abc.abstractmethod
    def key_hashes(self, lab: str) -> dict[str, str]:
        """sha256 -> agent for every virtual key of a lab."""

    def record_attempts(
        self, lab: str, run_id: str | None, attempts: Sequence[Mapping[str, Any]]
    ) -> None:
        """Append metered attempts (ATTEMPT_FIELDS each) in one transaction."""
        self.record_attempt_rows(
            lab, run_id, [tuple(a.get(c) for c in ATTEMPT_FIELDS) for a in attempts]
        )

    @abc.abstractmethod
    def record_attempt_rows(
        self, lab: str, run_id: str | None, rows: Sequence[Sequence[Any]]
    ) -> None:
        """`record_attempts` for rows of values in ATTEMPT_FIELDS order: the gateway's
        writer appends thousands a second, and dicts cost it twice as much."""

    @abc.abstractmethod
    def attempts(
        self,
        lab: str,
        *,
        agent: str | None = None,
        trial: str | None = None,
        after: int = 0,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Attempts with id > `after`, oldest first (each with its `id`)."""

    @abc.abstractmethod
    def usage_rows(self, run_id: str) -> list[UsageRow]:
        """Every gateway attempt of a run, reduced to who, which trial, when, and how much."""

    @abc.abstractmethod
    def spend(self, lab: str, *, agent: str | None = None, since: float | None = None) -> float:
        """Priced USD spent through the gateway (unpriced attempts add nothing)."""

    @abc.abstractmethod
    def cost_groups(self, lab: str, run_id: str | None = None) -> list[CostGroup]:
        """The lab's metered attempts (of one run, given `run_id`; '' for those outside any
        run) summed per run, agent, route, upstream, model and UTC hour, oldest first.
        Attempts recorded since the last call are folded in first; a call never misses
        an attempt recorded before it began."""

    # audit -----------------------------------------------------------------

    @abc.abstractmethod
    def append_audit(
        self,
        lab: str,
        build: Callable[[int, str], Sequence[AuditRecord]],
        *,
        cursors: Mapping[str, tuple[int, int]] | None = None,
    ) -> list[AuditRecord] | None:
        """Append to `lab`'s audit chain in one write transaction, serialized with every
        other appender (threads and processes alike).

        Reads the head inside the transaction and calls `build(head_seq, head_hash)`
        (0 and "" for an empty chain), which returns the records to insert, seq
        head_seq + 1, head_seq + 2, ...; an exception from `build` writes nothing.
        `cursors` maps a follower's source name to (expected, new) positions: when
        any stored position (0 if none) is not the expected one, another follower
        got there first and nothing is written (returns None); otherwise the
        positions move in the same transaction as the records, so a follower that
        restarts neither skips nor repeats.
        """

    @abc.abstractmethod
    def audit_records(self, lab: str, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with seq > `after`, in seq order."""

    @abc.abstractmethod
    def audit_head(self, lab: str) -> AuditRecord | None:
        """The record with the highest seq, None for an empty chain."""

    @abc.abstractmethod
    def audit_cursors(self, lab: str) -> dict[str, int]:
        """Where each audit follower of `lab` got to (source -> last id audited)."""

    @abc.abstractmethod
    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        """Keep a signed checkpoint (a second one at the same seq is ignored)."""

    @abc.abstractmethod
    def audit_checkpoints(self, lab: str) -> list[AuditCheckpoint]:
        """Every checkpoint of `lab`'s chain, in seq order."""

    # approvals ---------------------------------------------------------------

    @abc.abstractmethod
    def add_approval(self, approval: Approval) -> bool:
        """Insert a pending approval and its `approval.requested` event; False (and nothing
        written) when the id is taken."""

    @abc.abstractmethod
    def get_approval(self, approval_id: str) -> Approval | None:
        """As stored: a pending approval past `expires_at` stays pending until swept."""

    @abc.abstractmethod
    def approvals(
        self, lab: str, *, statuses: Iterable[ApprovalStatus] | None = None, limit: int = 1000
    ) -> list[Approval]:
        """Approvals of `lab`, oldest first."""

    @abc.abstractmethod
    def answer_approval(
        self,
        approval_id: str,
        status: Literal["approved", "denied"],
        *,
        by: str,
        note: str | None,
        at: float,
    ) -> Approval | None:
        """Answer an approval that is pending and not expired at `at`, with its event;
        None (nothing written) otherwise: read it to say why."""

    @abc.abstractmethod
    def expire_approvals(self, lab: str, now: float) -> list[Approval]:
        """Move every pending approval of `lab` with expires_at <= `now` to `expired`
        (answered_at = expires_at), each with its event; returns those moved."""

    # notifications ------------------------------------------------------------

    @abc.abstractmethod
    def add_notifications(
        self, lab: str, notices: Sequence[Notice], *, cursor: tuple[int, int] | None = None
    ) -> list[Notification] | None:
        """Store `notices` as `queued`, in one transaction; with `cursor` (expected, new),
        move the lab's notify position there in the same transaction, or write nothing and
        return None when the stored position (0 if none) is not the expected one."""

    @abc.abstractmethod
    def notify_position(self, lab: str) -> int | None:
        """The last event id the lab's notifier took in; None if it never ran."""

    @abc.abstractmethod
    def notifications(
        self,
        lab: str,
        *,
        sink: str | None = None,
        statuses: Iterable[NotificationStatus] | None = None,
        after: int = 0,
        limit: int = 1000,
        newest: bool = False,
    ) -> list[Notification]:
        """Notifications of `lab` with id > `after`, oldest first; with `newest`, the last
        `limit` of them (still oldest first)."""

    @abc.abstractmethod
    def settle_notifications(
        self,
        ids: Sequence[int],
        status: NotificationStatus,
        *,
        tries: int,
        answer: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record how the message carrying notifications `ids` went (their `message`
        becomes the smallest id)."""

    # the optimizer ------------------------------------------------------------

    @abc.abstractmethod
    def optuna_storage(self) -> BaseStorage:
        """Where the Optuna proposers keep their studies: this store's database, through one
        storage per database and process (creating one runs Optuna's own migrations), which
        outlives this Store's `close()`. Reads come from a copy of each study kept in this
        process, taken when the study is opened (`overnight.store.studies`): write a study
        from one process at a time."""

    @abc.abstractmethod
    def close(self) -> None: ...
