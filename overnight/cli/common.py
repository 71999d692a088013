"""What the commands share: the lab argument, reading a lab whose config may not load, and
(from `console`) the consoles they write to.

Knows nothing about any one command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from overnight.cli.console import err, out, print_json, warn

if TYPE_CHECKING:
    from overnight.lab.ledger import LabStore, LabView

__all__ = ["Dir", "err", "lab_store", "out", "print_json", "raise_interrupt", "run_view", "warn"]

Dir = Annotated[Path, typer.Argument(help="The lab: a git repository with overnight.toml.")]


def lab_store(directory: Path) -> LabStore:
    """The lab's store; with a config that does not load,
    read anyway, after a warning saying why."""
    from overnight.lab.ledger import open_lab_store

    lab = open_lab_store(directory)
    warn(lab.warning)
    return lab


def run_view(directory: Path) -> LabView:
    """A view of the latest run; with a config that does not load, read anyway, after a
    warning saying why."""
    from overnight.lab.ledger import open_view

    view = open_view(directory)
    warn(view.lab.warning)
    return view


def raise_interrupt(_signum: int, _frame: object) -> None:
    """A SIGTERM handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt
