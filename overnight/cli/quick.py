"""`overnight costs [DIR] [--json]` answered before the typer app is built.

Owns recognising that command line and answering it from the lab's saved `CostConfig`
(`overnight.costs.config`) and a direct read of its store (`overnight.store.direct`),
so the answer costs neither the config's models nor SQLAlchemy nor typer to import:
most of the command's time otherwise. Answers nothing it cannot answer exactly as
the command would (no saved config for these bytes, a store to create or migrate,
another option or argument): then `main` runs the app, which says what is wrong if
anything is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _costs_args(argv: list[str]) -> tuple[Path, bool] | None:
    """(the lab, --json) when `argv` is `costs [DIR] [--json]`; None for anything else."""
    if not argv or argv[0] != "costs":
        return None
    rest = argv[1:]
    as_json = "--json" in rest
    if as_json:
        rest.remove("--json")
    if len(rest) > 1 or (rest and rest[0].startswith("-")) or "--json" in rest:
        return None
    return Path(rest[0] if rest else "."), as_json


def answer(argv: list[str]) -> bool:
    """Whether `argv` was answered here (else the app must answer it)."""
    args = _costs_args(argv)
    if args is None:
        return False
    data = _costs(args[0])
    if data is None:
        return False
    if not args[1]:
        from overnight.cli.costs_view import show

        show(data)
    elif sys.stdout.isatty() or os.environ.keys() & {"FORCE_COLOR", "TTY_COMPATIBLE"}:
        from overnight.cli.console import print_json  # rich says whether it is a terminal

        print_json(data)
    else:  # what print_json writes to a pipe, without importing rich to be told so
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return True


def _costs(directory: Path) -> dict[str, Any] | None:
    from overnight.costs.config import config_bytes, saved

    root = directory.resolve()
    text = config_bytes(root)
    config = None if text is None else saved(root, text)
    if config is None:
        return None
    from overnight.costs.overview import overview
    from overnight.store import store_url
    from overnight.store.direct import driver_errors, open_snapshot

    try:
        snapshot = open_snapshot(store_url(root))
        if snapshot is None:
            return None
        with snapshot:
            run = snapshot.latest_run(config.lab)
            return None if run is None else overview(snapshot, config, run).as_dict()
    except driver_errors():
        return None  # the app reads it again, and says what is wrong
