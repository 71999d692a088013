"""What the commands share: the consoles they write to, the lab argument, and reading a
lab whose config may not load.

Knows nothing about any one command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from overnight.lab.ledger import LabStore, LabView

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

Dir = Annotated[Path, typer.Argument(help="The lab: a git repository with overnight.toml.")]


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout: coloured at a terminal; plain in a pipe, where
    colouring a large answer would take longer than computing it."""
    if out.is_terminal:
        out.print_json(json.dumps(data))
    else:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def warn(warning: str | None) -> None:
    """`warning: ...` on stderr (nothing for None)."""
    if warning:
        err.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)


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
