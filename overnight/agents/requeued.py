"""Re-queued proposals, each run for the agent that made it.

Owns handing an interrupted trial's proposal, tried again after a restart, back to
its maker when proposers share their queue. Knows nothing about how trials run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from overnight.lab.proposal import Proposal
from overnight.proposers import Proposer
from overnight.records import Trial


class Requeued:
    """Sees that a re-queued proposal runs for the agent that made it.

    Each agent's proposer gets its own interrupted trials back (`resume`), but proposers
    may share their queue: the agents of the `optuna` runtime, when the lab shares, ask
    one study, which hands a re-queued point to whoever asks next. So every proposal that
    comes back re-queued from another agent's trial is set aside for that agent, who
    takes it before asking anew, and the agent that got it asks again.
    """

    def __init__(self, makers: dict[int, str]) -> None:
        self.makers = makers
        """Trial number -> the agent that proposed it, for each re-queued trial."""
        self._aside: dict[str, list[Proposal]] = {}
        self._lock = threading.Lock()

    def own(self, name: str, proposer: Proposer) -> Proposer:
        """`proposer`, as agent `name` should ask it."""
        return _OwnRequeues(self, name, proposer) if self.makers else proposer

    def propose(self, name: str, proposer: Proposer, worktree: Path, trial: Trial) -> Proposal:
        while True:
            with self._lock:
                aside = self._aside.get(name)
                if aside:
                    return aside.pop(0)
            proposal = proposer.propose(worktree, trial)
            again = proposal.requeued_from
            maker = name if again is None else self.makers.get(again, name)
            if maker == name:
                return proposal
            # (its description was written against this agent's worktree; what it
            # changes is the same in the maker's)
            with self._lock:
                self._aside.setdefault(maker, []).append(proposal)


class _OwnRequeues:
    """A proposer whose re-queued proposals go to their makers (see `Requeued`)."""

    def __init__(self, requeued: Requeued, name: str, proposer: Proposer) -> None:
        self._requeued = requeued
        self._name = name
        self._proposer = proposer

    def propose(self, worktree: Path, trial: Trial) -> Proposal:
        return self._requeued.propose(self._name, self._proposer, worktree, trial)

    def observe(self, trial: Trial) -> None:
        self._proposer.observe(trial)

    def ahead(self) -> bool:
        ahead = getattr(self._proposer, "ahead", None)
        return bool(ahead()) if callable(ahead) else False

    def withdraw(self, proposal: Proposal) -> None:
        # (a re-queued point goes back to the queue, and from there to its maker again)
        withdraw = getattr(self._proposer, "withdraw", None)
        if callable(withdraw):
            withdraw(proposal)

    def resume(self, finished: Sequence[Trial], requeue: Sequence[Trial]) -> None:
        self._proposer.resume(finished, requeue)

    def baseline(self, trial: Trial, worktree: Path) -> None:
        self._proposer.baseline(trial, worktree)

    def adopted(self, worktree: Path, best: Trial) -> None:
        self._proposer.adopted(worktree, best)

    def close(self) -> None:
        close = getattr(self._proposer, "close", None)
        if callable(close):
            close()
