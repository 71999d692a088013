"""Proposers: where an in-process agent's next change comes from (Optuna knobs, an LLM's
edits), and the runtimes' registry.

Owns the Proposer protocol, the Runtime protocol and registry (what an agent's
`runtime` names: a proposer on a thread, or a CLI in a terminal) and the
built-in proposers. What a proposer returns (`Proposal`) and raises
(`ProposalError`, `ProposerUnavailable`) is the lab's word for what a trial
tries, in `overnight.lab.proposal`. Knows nothing about git, the runner or the
store's tables.
"""

from overnight.proposers.base import Proposer, ProposerSetup
from overnight.proposers.runtime import (
    ProposerRuntime,
    Register,
    Runtime,
    available,
    create,
    in_terminal,
    runtime,
)

__all__ = [
    "Proposer",
    "ProposerRuntime",
    "ProposerSetup",
    "Register",
    "Runtime",
    "available",
    "create",
    "in_terminal",
    "runtime",
]
