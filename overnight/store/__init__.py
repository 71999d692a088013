"""Persistence: the Store contract, its SQLAlchemy implementation, and migrations; and
a read of what the costs need through the driver alone (`direct`), for `overnight costs`.

Owns every byte overnight keeps in a database and the only SQL in the project.
Knows nothing about git, processes or the CLI.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight.paths import StateDir
from overnight.store.base import Store, TransitionError

if TYPE_CHECKING:
    from overnight.store.sql import SqlStore

ENV_URL = "OVERNIGHT_DB"


def store_url(lab_dir: Path) -> str:
    """`$OVERNIGHT_DB` if set, else the lab's own SQLite file."""
    url = os.environ.get(ENV_URL)
    if url:
        return url
    return f"sqlite:///{StateDir.of(lab_dir).database.resolve()}"


def store_exists(url: str) -> bool:
    """Whether the store at `url` was ever created (a database server's always counts)."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    return True


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        # Diffs, model replies and log tails live here: the owner's alone, whatever the
        # umask of the command that opens the database first (SQLite gives its -wal,
        # -shm and -journal files the database's own mode).
        path = Path(url.removeprefix("sqlite:///").partition("?")[0])
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only a file that does not exist yet: closing any descriptor of a database this
        # process already has open drops SQLite's POSIX locks on it, and another process
        # may then take it for closed and delete its WAL under our feet.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    from overnight.store.sql import SqlStore

    return SqlStore(url)


def __getattr__(name: str) -> Any:
    # SqlStore imports SQLAlchemy, which a reader that never opens a store through it (such
    # as `overnight costs`, through `direct`) should not pay for.
    if name == "SqlStore":
        from overnight.store.sql import SqlStore

        return SqlStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENV_URL",
    "SqlStore",
    "Store",
    "TransitionError",
    "open_store",
    "store_exists",
    "store_url",
]
