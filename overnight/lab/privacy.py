"""Private state: what overnight keeps in a lab's `.overnight/` is its user's alone.

Diffs, model replies and log tails (with whatever an experiment printed) live
there, so overnight's own commands create files with a private umask (0o077:
no access for group or others), while experiments and agents' CLIs get the
user's own umask back for what they write in their worktrees. A lab whose state
an older version left readable is made private when a run starts.

Owns the two umasks and making an existing state folder private. Knows nothing
about what the files hold, git, or the store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from overnight.paths import WORKTREES

PRIVATE_UMASK = 0o077
USER_UMASK_ENV = "OVERNIGHT_USER_UMASK"
"""The umask the user started overnight with, for overnight's own child processes
(`overnight agent` in a terminal session, `overnight try`), which start with ours."""


def keep_private() -> None:
    """From now on this process creates files and folders only its user can open.

    For a command that writes a lab's state; call it before any thread starts (a
    umask belongs to the whole process).
    """
    before = os.umask(PRIVATE_UMASK)
    os.environ.setdefault(USER_UMASK_ENV, f"{before:04o}")


def user_umask() -> int:
    """The umask to hand an experiment or an agent's CLI: the user's, or -1 (keep this
    process's own, as `subprocess.Popen(umask=-1)` does) if overnight never changed it."""
    try:
        return int(os.environ[USER_UMASK_ENV], 8) & 0o777
    except (KeyError, ValueError):
        return -1


def make_private(state_dir: Path) -> int:
    """Take group and other access off `state_dir` and everything overnight keeps in it,
    leaving the agents' worktrees (`worktrees/<run>/<agent>`, the user's own files) as
    they are. Returns how many modes it changed.

    Only the folder itself matters to a stranger (nothing below a 700 folder can be
    opened by anyone else); the rest is for a folder someone opens up again later.
    """
    changed = 0
    worktrees = state_dir / WORKTREES
    for folder, dirs, files in os.walk(state_dir):
        here = Path(folder)
        if here.parent == worktrees:
            dirs.clear()  # <run>'s agents' worktrees: checked out by git, left as they are
        for name in [*dirs, *files]:
            changed += _private(here / name)
    return changed + _private(state_dir)


def _private(path: Path) -> int:
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or not mode & 0o077:
            return 0
        path.chmod(stat.S_IMODE(mode) & 0o700)
    except FileNotFoundError:  # a lock or a log that went away meanwhile
        return 0
    return 1
