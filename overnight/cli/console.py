"""The consoles the commands write to (stdout, stderr), and the ways of writing JSON and a
warning on them.

Imports rich and nothing of typer: `quick` prints through here before the app is built.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


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
