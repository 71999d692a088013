"""A candidate prepared ahead: an agent's next change, made while its trial runs.

With as many agents as slots, a slot idles while its agent does everything a trial
needs outside the experiment, and most of that is making the next candidate: the
proposal, the change written and committed, its diff. An agent whose proposer can
propose without the last result (`ahead`, see `overnight.proposers.base`) has it
made while its current trial runs, in a checkout of its own (not the worktree its
experiment runs in), on the commit the agent goes on from should that trial not be
kept: the candidate's tree and diff, no trial numbered, no commit made. The next
trial then only commits that tree (numbered, as any trial's commit) and checks it
out; for a cluster not even that: its files were packed for the node ahead, and the
agent's worktree stays where it was. If the agent moved
meanwhile (a keep, a move to the lab's best), the proposal goes back to its proposer
(`withdraw`), which proposes it again from where the agent stands. A kill loses
nothing: no trial was recorded, and the proposer's resume tidies up what it was
asked. Knows nothing about the store or how trials run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from overnight.lab.cluster import archive_of
from overnight.lab.git import Git
from overnight.lab.proposal import Proposal, ProposalError


@dataclass(frozen=True)
class Prepared:
    """The next change of one agent, made ahead on `parent`."""

    parent: str
    proposal: Proposal
    tree: str | None
    """The candidate's tree; None when the change did not apply (the trial, if run,
    applies it again and records why it failed)."""
    patch: str = ""
    changed: list[str] = field(default_factory=list)
    archive: bytes | None = None
    """The tree's files as a tar, for a trial on a cluster (`cluster.archive_of`)."""


def prepare(
    git: Git,
    checkout: Path,
    parent: str,
    propose: Callable[[Path], Proposal],
    *,
    pack: bool = False,
) -> Prepared:
    """Propose in `checkout` (made at `parent`, or reset there, ignored files kept) and
    apply the change there (`pack`: and tar its files, for a cluster's node); raises what
    `propose` raises."""
    made = (checkout / ".git").exists()
    spare = Git(checkout) if made else git.add_worktree(checkout, parent)
    spare.reset_clean(parent)
    proposal = propose(checkout)
    try:
        proposal.apply(checkout)
    except (ProposalError, OSError, KeyError, ValueError):
        return Prepared(parent, proposal, None)
    tree = spare.tree_of_all()
    patch, changed = spare.diff(parent, tree)
    archive = archive_of(checkout, tree) if pack else None
    return Prepared(parent, proposal, tree, patch, changed, archive)
