"""Runtimes: what an agent's `runtime = "..."` names, by name, built-in or a plugin's.

Owns the Runtime protocol and the runtimes' registry (`overnight.plugins`, hook
`register_runtimes`). A runtime knows its own kind: `terminal` says whether its
agent runs as a process of its own in a terminal session (an external CLI, see
`overnight.agents.runtimes`) or on a thread of `overnight run`, asking a proposer
for each change (`ProposerRuntime`, how the built-in optuna and llm runtimes and
any third-party proposer register). Knows nothing about how either is run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overnight.errors import UserError
from overnight.plugins import Registry
from overnight.proposers.base import Proposer, ProposerFactory, ProposerSetup


class Runtime(Protocol):
    """How an agent thinks, as the lab's start and the supervisor ask it."""

    @property
    def name(self) -> str:
        """What `runtime = "..."` in overnight.toml calls it."""

    @property
    def terminal(self) -> bool:
        """True: its agent is a process of its own in a terminal session (`overnight agent
        NAME`), which submits with `overnight try`. False: a `ProposerRuntime`, run on a
        thread of `overnight run`."""

    @property
    def llm(self) -> bool:
        """It thinks with a model through the lab's gateway: its agents need a `model`."""

    @property
    def knobs(self) -> bool:
        """It tunes the lab's `[[knobs]]`: the lab needs some."""

    def missing(self) -> str | None:
        """Why it cannot run on this machine ("problem\\n  fix: ..."), or None."""


@dataclass(frozen=True)
class ProposerRuntime:
    """A runtime whose agent runs on a thread of `overnight run`, asking `proposer`
    (built once per agent) for each change."""

    name: str
    proposer: ProposerFactory
    llm: bool = False
    knobs: bool = False

    @property
    def terminal(self) -> bool:
        return False

    def missing(self) -> str | None:
        return None


RUNTIMES: Registry[Runtime] = Registry("register_runtimes")

Register = Callable[[Runtime], None]
"""What a plugin's `register_runtimes(register)` hook is given."""


def runtime(name: str) -> Runtime:
    found = RUNTIMES.get(name)
    if found is None:
        raise UserError(f"unknown runtime {name!r}; available: {', '.join(RUNTIMES.names())}")
    return found


def in_terminal(name: str) -> bool:
    """Whether the agents of the runtime called `name` run in a terminal (False for one
    no longer installed: a past run's agent is shown, never run)."""
    found = RUNTIMES.get(name)
    return found is not None and found.terminal


def available() -> list[str]:
    """Every runtime's name, sorted."""
    return RUNTIMES.names()


def create(name: str, setup: ProposerSetup) -> Proposer:
    """The proposer of the runtime called `name`, for the agent `setup` describes."""
    found = runtime(name)
    if not isinstance(found, ProposerRuntime):
        raise UserError(f"the {name} runtime runs in a terminal: it has no proposer")
    return found.proposer(setup)
