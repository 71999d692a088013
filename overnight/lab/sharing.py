"""Sharing: an agent stuck behind the lab's best moves to it (population-based training's exploit).

Each agent ratchets on its own branch, so one that wandered into a worse basin
keeps "improving" there while another agent holds a far better commit. With
`[lab] share = "best"` (the default with two or more agents), an agent whose best
has trailed the lab's best by more than the noise for `patience` of its own
trials in a row *adopts* the lab's best: its ratchet (best commit, metric and
trial), its branch and its worktree move there, and an `agent.adopted` event
says from which commit and metric to which, and whose trial that was. Its next
trials start from there.

Everything is read from the store, so any process holding the lab may decide
(the command center after an agent's trial, an external agent's own process
between its turns), and a restart forgets nothing. The caller chooses the
moment: only when the agent has no work of its own in flight or in its
worktree. Adopting takes the agent's lock, like a trial, and writes the store
before it touches git (write-ahead).

Knows nothing about proposers, the supervisor or how an agent is told.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight.lab.git import Git
from overnight.lab.ratchet import better, improves
from overnight.org.config import Goal
from overnight.records import Event, Trial, TrialStatus

if TYPE_CHECKING:
    from overnight.lab.lab import Lab

ADOPTED = "agent.adopted"
LOCK_WAIT = 2.0
"""Seconds to wait for the agent's lock (held a moment by a trial that just ended)."""
_S = TrialStatus


def noise(lab: Lab) -> float:
    """How far apart two metrics must be before one is better beyond the noise: the
    margin a keep must clear (`min_delta`, or the noise floor the run measured)."""
    return lab.min_delta


def enabled(lab: Lab) -> bool:
    """Whether the lab's agents share: `share = "best"`, or unset with two agents or more."""
    return lab.config.shares()


@dataclass(frozen=True)
class Adoption:
    """An agent's move to the lab's best, as its `agent.adopted` event records it."""

    agent: str
    from_commit: str
    from_metric: float | None
    from_trial: int | None
    to_commit: str
    to_metric: float
    to_trial: int
    to_agent: str
    trailed: int
    """Its own trials in a row that ended with its best behind the lab's."""
    event: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "from_commit": self.from_commit,
            "from_metric": self.from_metric,
            "from_trial": self.from_trial,
            "to_commit": self.to_commit,
            "to_metric": self.to_metric,
            "to_trial": self.to_trial,
            "to_agent": self.to_agent,
            "trailed": self.trailed,
        }

    @classmethod
    def of(cls, event: Event) -> Adoption:
        p: Mapping[str, Any] = event.payload
        return cls(
            agent=event.agent or "",
            from_commit=str(p["from_commit"]),
            from_metric=p.get("from_metric"),
            from_trial=p.get("from_trial"),
            to_commit=str(p["to_commit"]),
            to_metric=float(p["to_metric"]),
            to_trial=int(p["to_trial"]),
            to_agent=str(p["to_agent"]),
            trailed=int(p.get("trailed", 0)),
            event=event.id,
        )

    def message(self, metric: str) -> str:
        """What the agent is told, in its words."""
        was = "—" if self.from_metric is None else f"{self.from_metric:.6g}"
        return (
            f"overnight: your best ({metric} {was}) trailed the lab's best for "
            f"{self.trailed} of your trials in a row, so your worktree and branch moved to the "
            f"lab's best: trial {self.to_trial} by {self.to_agent} ({metric} "
            f"{self.to_metric:.6g}, commit {self.to_commit[:10]}). Build on it from there; "
            "your earlier trials stay in the ledger."
        )


class Sharing:
    """The exploit step of one lab's run."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.enabled = enabled(lab)

    def consider(self, agent: str) -> Adoption | None:
        """Move `agent` to the lab's best if it has trailed long enough; the adoption, or
        None. Call it only where the agent has nothing of its own in flight or unsubmitted
        in its worktree (that worktree is reset to the new best)."""
        if not self.enabled or self._due(agent) is None:
            return None
        lock = self.lab.agent_lock(agent)
        if not lock.acquire(wait=LOCK_WAIT):
            return None  # a trial of its own runs: its end is the next chance
        try:
            due = self._due(agent)  # again, under the lock
            return None if due is None else self._adopt(due)
        finally:
            lock.release()

    def latest(self, agent: str, after: int = 0) -> Adoption | None:
        """The agent's newest adoption recorded after event id `after`, if any."""
        event = self.lab.store.last_event(self.lab.run.id, [ADOPTED], agent=agent, after=after)
        return None if event is None else Adoption.of(event)

    def _due(self, agent: str) -> Adoption | None:
        """The adoption `agent` is due for now, if any."""
        lab = self.lab
        record = lab.agent(agent)
        best = lab.best()
        if best is None or best.metric is None or best.candidate_commit is None:
            return None
        if record.best_commit == best.candidate_commit or record.best_metric is None:
            return None
        goal, floor = lab.config.lab.goal, noise(lab)
        if not improves(best.metric, record.best_metric, goal, floor):
            return None
        patience = lab.config.lab.patience
        kept = lab.store.trials(lab.run.id, statuses=[_S.kept])
        window = 2 * patience + 4  # its latest trials are enough, unless many were interrupted
        while True:
            own = lab.store.trials(lab.run.id, agent=agent, last=window)
            count = trailing(own, kept, goal, floor, record.best_commit)
            tried = sum(1 for t in own if t.status.final and t.status is not _S.interrupted)
            if count >= patience or count < tried or len(own) < window:
                break
            window *= 4
        if count < patience:
            return None
        return Adoption(
            agent=agent,
            from_commit=record.best_commit,
            from_metric=record.best_metric,
            from_trial=record.best_trial,
            to_commit=best.candidate_commit,
            to_metric=best.metric,
            to_trial=best.number,
            to_agent=best.agent,
            trailed=count,
        )

    def _adopt(self, adoption: Adoption) -> Adoption:
        lab, agent, commit = self.lab, adoption.agent, adoption.to_commit
        record = lab.agent(agent)
        # the store first, the move and its record at once: a kill from here on is repaired
        # by the next start, which puts every branch and worktree where the store says
        event = lab.store.set_agent_best(
            lab.run.id, agent, commit, adoption.to_metric, adoption.to_trial,
            event=(ADOPTED, adoption.payload()),
        )  # fmt: skip
        assert event is not None
        lab.git.update_ref(f"refs/heads/{record.branch}", commit)
        Git(Path(record.worktree)).reset_clean(commit)
        return replace(adoption, event=event.id)


def trailing(
    own: Sequence[Trial], kept: Sequence[Trial], goal: Goal, floor: float, current: str
) -> int:
    """How many of an agent's latest trials in a row ended with its best behind the lab's
    best of that moment by more than `floor`; `current` is its best commit now.

    Read from the ledger alone: a trial's parent is the agent's best when it began, so
    its best after it is the trial's commit if kept, its parent otherwise; the lab's best
    of the moment is the best kept trial that had finished by then. The count stops at
    the agent's last move to the lab's best (a trial that did not leave the agent where
    the next trial, or now, finds it), and interrupted trials, which tried nothing, are
    passed over.
    """
    metric_of = {t.candidate_commit: t.metric for t in kept if t.metric is not None}
    # the lab's best after each keep, in the order they finished
    times: list[float] = []
    bests: list[float] = []
    for t in sorted(kept, key=lambda t: t.finished_at or 0.0):
        if t.metric is not None:
            best = t.metric if not bests or better(t.metric, bests[-1], goal) else bests[-1]
            times.append(t.finished_at or 0.0)
            bests.append(best)
    count = 0
    parent_after = current  # where the agent stood after each trial looked at
    for trial in reversed([t for t in own if t.status.final and t.status is not _S.interrupted]):
        after = trial.candidate_commit if trial.status is _S.kept else trial.parent_commit
        if after is None or after != parent_after:
            break
        mine = metric_of.get(after)
        then = bisect.bisect_right(times, trial.finished_at or 0.0)
        if mine is None or then == 0 or not improves(bests[then - 1], mine, goal, floor):
            break
        count += 1
        parent_after = trial.parent_commit
    return count
