"""Exclusive lock files that die with their process: one `overnight run` per lab, and
one trial at a time per agent (`overnight try` runs in the agent's own process).

flock(2) is released by the kernel when the holder exits, kill -9 included, so a
crashed run never leaves a stale lock behind. Knows nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from overnight.errors import LabBusy
from overnight.paths import StateDir


def _take(path: Path, wait: float = 0.0) -> int | None:
    """An exclusive flock on `path` with our pid written in it, or None if it is held
    (after trying for `wait` seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class LabLock:
    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.path = StateDir.of(lab_dir).lock
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = _take(self.path)
        if self._fd is None:
            raise LabBusy(self.lab_dir, holder(self.lab_dir))

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def holder(lab_dir: Path) -> int | None:
    """The pid of the process running this lab, or None if nobody is."""
    path = StateDir.of(lab_dir).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class AgentLock:
    """Held while one of an agent's trials is in flight, by whichever process runs it.

    `overnight run` starting up leaves a held agent's in-flight trial alone: it
    belongs to a live `overnight try` of an agent that outlived the last run.
    """

    def __init__(self, lab_dir: Path, run_id: str, agent: str) -> None:
        self.path = StateDir.of(lab_dir).agent_lock(run_id, agent)
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> bool:
        """Take it if free (within `wait` seconds); False if another process (or thread)
        holds it."""
        self._fd = _take(self.path, wait)
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def held(self) -> bool:
        """Whether someone holds it now (asking takes and drops it when free)."""
        if self._fd is not None:
            return True
        if self.acquire():
            self.release()
            return False
        return True
