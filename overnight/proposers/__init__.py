"""Proposers: where an agent's next change comes from (Optuna knobs, an LLM's edits).

Owns the Proposer protocol, its registry and the built-in proposers. Knows
nothing about git, the runner or the store's tables.
"""

from overnight.proposers.base import (
    Proposal,
    ProposalError,
    Proposer,
    ProposerSetup,
    ProposerUnavailable,
    available,
    create,
    register,
)

__all__ = [
    "Proposal",
    "ProposalError",
    "Proposer",
    "ProposerSetup",
    "ProposerUnavailable",
    "available",
    "create",
    "register",
]
