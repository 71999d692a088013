"""Proposers: where an agent's next change comes from (Optuna knobs, an LLM's edits).

Owns the Proposer protocol, its registry and the built-in proposers. What a
proposer returns (`Proposal`) and raises (`ProposalError`, `ProposerUnavailable`)
is the lab's word for what a trial tries, in `overnight.lab.proposal`. Knows
nothing about git, the runner or the store's tables.
"""

from overnight.proposers.base import (
    Proposer,
    ProposerSetup,
    available,
    create,
    register,
)

__all__ = [
    "Proposer",
    "ProposerSetup",
    "available",
    "create",
    "register",
]
