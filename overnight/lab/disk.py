"""The disk a lab writes to: how much its trial logs may take, how much must stay free.

Owns `[lab] max_logs`, a cap on all of a lab's trial logs together (every run's:
they share one disk), and `[lab] min_free_disk`, the free space below which no
trial starts. Before a trial runs, the oldest logs lose their middles until the
logs that may still grow fit under the cap: each keeps its head and its tail,
with a line saying how many bytes went (the ledger keeps every trial's last lines
anyway). Then, while the filesystem holding the lab's state has less free space
than the floor, the trial waits; the first wait of each episode and its end are
recorded as events.

Knows nothing about trials, git or the store: it is told which logs are still
being written and is handed a function that records an event.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEEP_HEAD = 16 * 1024
KEEP_TAIL = 16 * 1024
"""What a trimmed log keeps of its beginning and its end (cut at line ends)."""
RUNNER_TAIL = 64 * 1024 + 1024
"""What the budgeted runner may write after a log's capped head: its kept tail and
its marker lines."""
POLL_S = 1.0
"""How often a trial waiting for free space looks again (a statvfs costs microseconds)."""
_LOG_NAME = re.compile(r"trial-(\d+)\.log")


@dataclass(frozen=True)
class Log:
    run: str
    number: int
    path: Path
    size: int


def trial_logs(logs_dir: Path) -> list[Log]:
    """Every trial log under `logs_dir` (`<run>/trial-NNNNN.log`), oldest first: run ids
    are start times, so their order is the runs' order."""
    found = []
    try:
        runs = [entry for entry in os.scandir(logs_dir) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    for run in runs:
        for entry in os.scandir(run.path):
            match = _LOG_NAME.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat(follow_symlinks=False).st_size
                    found.append(Log(run.name, int(match.group(1)), Path(entry.path), size))
    found.sort(key=lambda log: (log.run, log.number))
    return found


def log_room(max_log: int, commands: int, parallel: int) -> int:
    """How much the logs of `parallel` trials about to run (or running) may still grow:
    each of a trial's `commands` (run, evaluate) writes up to `max_log` bytes and the
    runner's tail."""
    return parallel * commands * (max_log + RUNNER_TAIL)


@dataclass(frozen=True)
class Trimmed:
    logs: int
    freed: int
    total: int
    """The logs' total size afterwards."""


_trimming = threading.Lock()


def make_room(logs_dir: Path, cap: int, room: int, live: Collection[Path]) -> Trimmed:
    """Trim the oldest of the lab's trial logs until they all take at most `cap - room`
    bytes, so the `room` that logs being written may still take keeps them under `cap`.

    Logs in `live` (still being written) are never touched. Middles go first; only when
    every other log is down to its head and tail (a cap too small for this many logs)
    do the oldest logs lose the rest, down to one line saying so.
    """
    with _trimming:  # parallel trials of one process: one trims, the next finds it done
        logs = trial_logs(logs_dir)
        total = sum(log.size for log in logs)
        excess = total + room - cap
        if excess <= 0:
            return Trimmed(0, 0, total)
        spare = {Path(p) for p in live}
        older = [log for log in logs if log.path not in spare]
        trimmed = freed = 0
        for keep in ((KEEP_HEAD, KEEP_TAIL), (0, 0)):
            for log in older:
                if freed >= excess:
                    break
                saved = _trim(log.path, *keep, cap)
                freed += saved
                trimmed += saved > 0
        return Trimmed(trimmed, freed, total - freed)


def _trim(path: Path, head_bytes: int, tail_bytes: int, cap: int) -> int:
    """Drop the middle of the log at `path`, keeping about `head_bytes` of its beginning
    and `tail_bytes` of its end; returns the bytes saved (0 if too small to bother)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return 0
    with fh:
        # its size now, not when listed: another process may have trimmed it since
        size = os.fstat(fh.fileno()).st_size
        if size <= head_bytes + tail_bytes + 512:
            return 0
        head = fh.read(head_bytes)
        fh.seek(size - tail_bytes)
        tail = fh.read(tail_bytes)
    if b"\n" in head:  # no line cut in two
        head = head[: head.rindex(b"\n") + 1]
    if b"\n" in tail[:-1]:
        tail = tail[tail.index(b"\n") + 1 :]
    dropped = size - len(head) - len(tail)
    what = "bytes dropped here" if tail_bytes else "bytes of this log dropped"
    note = (
        ("" if not head or head.endswith(b"\n") else "\n")
        + f"[overnight: {dropped} {what} to keep the lab's trial logs under max_logs "
        f"({cap} bytes); the ledger keeps the trial's last lines]\n"
    ).encode()
    # A new file put in the log's place at once: a reader sees the old log or the new.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".trim", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head + note + tail)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return size - len(head) - len(note) - len(tail)


class FreeSpace:
    """Holds trials back while the filesystem holding `path` has less than `floor` bytes
    free (to an unprivileged user), recording `lab.disk_low` when a wait begins and
    `lab.disk_recovered` when space is back, once per episode."""

    def __init__(
        self, path: Path, floor: int, record: Callable[[str, Mapping[str, Any]], object]
    ) -> None:
        self.path = path
        self.floor = floor
        self.record = record
        self._lock = threading.Lock()
        self._low_since: float | None = None

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def wait(self, stop: threading.Event, deadline: float | None = None) -> bool:
        """True once there is at least `floor` free; False if `stop` is set or the
        `deadline` (time.monotonic()) passes first."""
        while True:
            free = self.free()
            if free >= self.floor:
                self._episode(low=False, free=free)
                return True
            self._episode(low=True, free=free)
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0 or stop.wait(left):
                return False

    def _episode(self, *, low: bool, free: int) -> None:
        with self._lock:
            if low == (self._low_since is not None):
                return
            payload: dict[str, Any] = {
                "free_bytes": free,
                "min_free_disk": self.floor,
                "path": str(self.path),
            }
            if low:
                self._low_since = time.time()
                self.record("lab.disk_low", payload)
            else:
                assert self._low_since is not None
                payload["waited_s"] = round(time.time() - self._low_since, 3)
                self._low_since = None
                self.record("lab.disk_recovered", payload)
