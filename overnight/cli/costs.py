"""`overnight costs`: what the night's model calls cost, where it is heading, what is odd.

Owns the command as the app answers it (`quick` answers it first when it can, the same
way), which saves the config's costs' part for `quick`; `costs_view` shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overnight.cli.common import Dir, print_json, run_view
from overnight.cli.costs_view import show

commands = typer.Typer()


@commands.command()
def costs(
    directory: Dir = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Spend per agent, runtime, route and day; the forecast; anomalies and advice."""
    from overnight.costs.config import config_bytes, save
    from overnight.costs.overview import overview

    text = config_bytes(directory.resolve())
    view = run_view(directory)
    try:
        data = overview(view.store, view.config, view.run).as_dict()
    finally:
        view.close()
    if text is not None and view.lab.org is not None:
        save(view.root, text, view.lab.org.config)  # for `quick` to answer the next time
    if as_json:
        print_json(data)
        return
    show(data)
