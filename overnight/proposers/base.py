"""The Proposer protocol: how an in-process agent comes up with its next change.

A proposer turns the lab's state into a `Proposal` (a description, the data
stored on the trial, and a function that writes the change into a worktree:
`overnight.lab.proposal`, the lab's own word for what it tries), and learns
from each finished trial. A runtime that has one registers it as a
`ProposerRuntime` (`runtime.py`). Knows nothing about git, runners or the
store's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from overnight.lab.proposal import Proposal
from overnight.org.config import OrgConfig
from overnight.records import Trial


@dataclass(frozen=True)
class ProposerSetup:
    """Everything a proposer may know when it is built for one agent."""

    config: OrgConfig
    run_id: str
    agent: str
    store_url: str
    program: str = ""
    root: Path | None = None
    """The lab's directory (the main checkout)."""
    gateway_url: str | None = None
    """The lab's LLM gateway, when `overnight.toml` has a [gateway]."""
    key_file: Path | None = None
    """The file holding this agent's virtual key for the gateway."""
    extra: Mapping[str, Any] = field(default_factory=dict)


class Proposer(Protocol):
    def propose(self, worktree: Path, trial: Trial) -> Proposal:
        """The next change, given the agent's worktree at its best commit and the trial
        (already `proposed`, numbered, with no description yet) it will be tried as.
        Raises ProposalError when no usable change comes of it."""

    def observe(self, trial: Trial) -> None:
        """Learn from a trial that reached a final status."""

    def resume(self, finished: Sequence[Trial], requeue: Sequence[Trial]) -> None:
        """At start: learn from `finished` trials it may have missed (idempotent), and
        arrange for `requeue` (interrupted trials) to be proposed again, once each."""

    def baseline(self, trial: Trial, worktree: Path) -> None:
        """Learn from the measured baseline (the unchanged code)."""

    def adopted(self, worktree: Path, best: Trial) -> None:
        """Its agent moved to the lab's best (`best`, a kept trial of another agent; the
        worktree is at its commit now): the next proposals start from there."""

    # Optional: a proposer with `ahead` and `withdraw` may be asked for its next change
    # while its agent's trial still runs (see overnight.lab.ahead):
    #
    #   def ahead(self) -> bool:
    #       """Whether its next proposal may be made before the running trial's result is
    #       in (then `propose` is given a checkout at the agent's best commit, and the
    #       running trial or None)."""
    #
    #   def withdraw(self, proposal: Proposal) -> None:
    #       """A proposal made ahead will not be tried (the agent moved on, the run ended)."""


ProposerFactory = Callable[[ProposerSetup], Proposer]
