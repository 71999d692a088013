"""The disk a lab writes to: how much its trial logs may take, how much must stay free.

Owns `[lab] max_logs`, a cap on all of a lab's trial logs together (every run's:
they share one disk), and `[lab] min_free_disk`, the free space below which no
trial starts. Before a trial runs, the oldest logs lose their middles until the
logs that may still grow fit under the cap: each keeps its head and its tail,
with a line saying how many bytes went (the ledger's copy of a failed trial's
last lines is not touched). Then, while the filesystem holding the lab's state
has less free space than the floor, the trial waits; the first wait of each
episode and its end are recorded as events.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEEP_HEAD = 16 * 1024
KEEP_TAIL = 16 * 1024
"""What a trimmed log keeps of its beginning and its end (cut at line ends)."""
RUNNER_TAIL = 64 * 1024 + 1024
"""What the budgeted runner may write after a log's capped head: its kept tail and
its marker lines."""
SETTLED_NS = 5 * 10**9
"""A log (or a run's folder of logs) untouched this long is taken to be finished."""
POLL_S = 1.0
"""How often a trial waiting for free space looks again (a statvfs costs microseconds)."""
_LOG_NAME = re.compile(r"trial-(\d+)\.log")


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


class TrialLogs:
    """A lab's trial logs (`<logs_dir>/<run>/trial-NNNNN.log`), kept under `cap` bytes
    together. Safe to share between threads; other processes may trim the same logs."""

    def __init__(self, logs_dir: Path, cap: int) -> None:
        self.logs_dir = logs_dir
        self.cap = cap
        self._lock = threading.Lock()
        self._runs: dict[str, _Folder] = {}
        """Each run's folder of logs as this process last saw it: a look costs a stat per
        folder, a directory read for one that changed and a stat per log still being
        written. A log that has not been written for a while only ever shrinks (when
        trimmed), so a stale size errs on the side of trimming."""

    def make_room(self, room: int, live: Collection[str]) -> Trimmed:
        """Trim the oldest logs until all of them take at most `cap - room` bytes, so the
        `room` that logs being written may still take keeps them under `cap`.

        Logs in `live` (still being written) are never touched. Middles go first; only
        when every other log is down to its head and tail (a cap too small for this many
        logs) do the oldest lose the rest, down to one line saying so.
        """
        with self._lock:  # parallel trials of one process: one trims, the next finds it done
            folders = self._look(set(live))
            total = sum(folder.total for folder in folders.values())
            excess = total + room - self.cap
            if excess <= 0:
                return Trimmed(0, 0, total)
            # run ids are start times: the oldest run first, then its lowest trial number
            logs = sorted(
                ((run, number), path, size)
                for run, folder in folders.items()
                for path, (number, size, _done) in folder.logs.items()
                if path not in live
            )
            counted = {path: size for _key, path, size in logs}
            trimmed = freed = 0
            for keep in ((KEEP_HEAD, KEEP_TAIL), (0, 0)):
                for path, size in counted.items():
                    if freed >= excess:
                        break
                    # its size now, which another process's trim may have made smaller
                    now, left = _trim(path, *keep, self.cap)
                    freed += size - left
                    counted[path] = left
                    trimmed += left < now
                    self._forget(path)
            return Trimmed(trimmed, freed, total - freed)

    def _forget(self, path: str) -> None:
        folder = self._runs.get(os.path.basename(os.path.dirname(path)))
        if folder is not None:
            folder.logs.pop(path, None)
            folder.complete = False

    def _look(self, live: set[str]) -> dict[str, _Folder]:
        """Every run's folder of logs, by run id, as it is now."""
        try:
            runs = [e for e in os.scandir(self.logs_dir) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            runs = []
        settled = time.time_ns() - SETTLED_NS
        writing = {os.path.dirname(path) for path in live}
        folders = {}
        for run in runs:
            mtime = run.stat(follow_symlinks=False).st_mtime_ns
            folder = self._runs.get(run.name)
            if folder is None or not (
                folder.complete and folder.mtime == mtime and run.path not in writing
            ):
                folder = self._scan(run.path, live, folder.logs if folder else {})
                folder.mtime = mtime
                folder.complete = folder.complete and mtime < settled
            folders[run.name] = folder
        self._runs = folders
        return folders

    @staticmethod
    def _scan(path: str, live: set[str], old: dict[str, tuple[int, int, bool]]) -> _Folder:
        settled = time.time_ns() - SETTLED_NS
        folder = _Folder()
        for entry in os.scandir(path):
            match = _LOG_NAME.fullmatch(entry.name)
            if not match:
                continue
            known = old.get(entry.path)
            if known is None or not known[2] or entry.path in live:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                done = entry.path not in live and st.st_mtime_ns < settled
                known = (int(match.group(1)), st.st_size, done)
            folder.logs[entry.path] = known
            folder.total += known[1]
            folder.complete = folder.complete and known[2]
        return folder


@dataclass
class _Folder:
    """A run's folder of logs as last seen: (trial number, size, finished) per log, and
    whether all of them were finished and the folder unchanged for a while."""

    logs: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    total: int = 0
    mtime: int = 0
    complete: bool = True


def _trim(path: str, head_bytes: int, tail_bytes: int, cap: int) -> tuple[int, int]:
    """Drop the middle of the log at `path`, keeping about `head_bytes` of its beginning
    and `tail_bytes` of its end (not worth it for a log barely longer). Returns its size
    before and after."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= head_bytes + tail_bytes + 512:
                return size, size
            head = fh.read(head_bytes)
            fh.seek(size - tail_bytes)
            tail = fh.read(tail_bytes)
    except FileNotFoundError:
        return 0, 0
    if b"\n" in head:  # no line cut in two
        head = head[: head.rindex(b"\n") + 1]
    if b"\n" in tail[:-1]:
        tail = tail[tail.index(b"\n") + 1 :]
    dropped = size - len(head) - len(tail)
    what = "bytes dropped here" if tail_bytes else "bytes of this log dropped"
    note = (
        ("" if not head or head.endswith(b"\n") else "\n")
        + f"[overnight: {dropped} {what} to keep the lab's trial logs under max_logs "
        f"({cap} bytes)]\n"
    ).encode()
    # A new file put in the log's place at once: a reader sees the old log or the new.
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".trim", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head + note + tail)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return size, len(head) + len(note) + len(tail)


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
