"""What a trial tries: a `Proposal`, and the two ways coming up with one can fail.

The lab applies a proposal to an agent's worktree and measures it, whoever made
it: a proposer (`overnight.proposers`), `overnight try` from an agent's terminal,
or the baseline's unchanged code. Proposers import these types from here, so the
lab never needs to know them. Knows nothing about git, runners or the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ProposalError(Exception):
    """No usable proposal (a reply that cannot be parsed, an edit that does not apply):
    the agent's mistake, recorded on the trial as `crashed` with `data` (e.g. the raw
    reply) kept as its proposal."""

    def __init__(self, message: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data: Mapping[str, Any] = data or {}


class ProposerUnavailable(Exception):
    """The proposer cannot think right now (its model route is down, its budget spent):
    not the agent's mistake. The trial is recorded `interrupted` with this reason and
    nothing to retry; the supervisor decides whether to wait, pause or optimize.
    `retry_after` (seconds), when known, says how long to wait."""

    def __init__(
        self, message: str, *, brownout: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.brownout = brownout
        self.retry_after = retry_after


@dataclass(frozen=True)
class Proposal:
    description: str
    data: Mapping[str, Any]
    apply: Callable[[Path], None]
    requeued_from: int | None = None
