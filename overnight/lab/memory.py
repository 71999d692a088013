"""Peak memory of an experiment: what `memory_gb` says when the run prints no `peak_vram_mb`.

Owns measuring how much resident memory an experiment's processes held at most, and
takes the largest of three figures:

- **samples of the whole tree**: a thread reads `/proc/<pid>/stat` of every process in
  the experiment's session (the runner starts each one in a session of its own, and
  bubblewrap keeps its children there) and sums their RSS, which is what a run with
  worker processes (a data loader's) holds together. Pages two processes share are
  counted twice, as `ps` would;
- **each process's own high-water mark** (`VmHWM`), read at those samples, so a spike
  of a process between two samples counts;
- **the kernel's high-water mark of the biggest process** of the tree, which `wait4`
  reports at the end, spikes of processes that died between samples included. The
  kernel starts a child's count with its parent's high-water mark at `exec` (a child of
  a 300 MB process "peaks" at 300 MB running `true`), and the experiment descends from
  overnight: so that figure counts only when it is above overnight's own mark.

A process that leaves the session (`setsid`, a daemon) is not counted. Knows nothing
about trials, the store or what the numbers are for.
"""

from __future__ import annotations

import os
import subprocess
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MB = 1024 * 1024
SAMPLE_S = (0.02, 0.03, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
"""Seconds between samples: often at the start, so a short run is seen at all (one
that ends within 20 ms is not, and has no peak unless it outgrew overnight), then
every second (a sample reads every process's stat: ~1.6 ms for 120 processes, ~5 ms
for 400, see benchmarks/peak_memory.py). A spike of one process between samples is
still caught, by wait4's high-water mark."""


def session_rss(session: int) -> int:
    """Bytes resident in every process of `session`, now."""
    return sum(_session(session).values())


def _session(session: int) -> dict[str, int]:
    """pid -> bytes resident, for every process of `session`."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        # the command's name is in parentheses and may hold spaces: split after it;
        # then state ppid pgrp session ..., and rss (in pages) is the 22nd field
        fields = stat[stat.rfind(b")") + 2 :].split(None, 22)
        if len(fields) > 21 and int(fields[3]) == session:
            found[name] = int(fields[21]) * _PAGE
    return found


def high_water(pid: str = "self") -> int:
    """The peak resident bytes of one process so far (`VmHWM`), 0 if it is gone."""
    status = _read(f"/proc/{pid}/status")
    at = status.find(b"VmHWM:")
    if at < 0:
        return 0
    return int(status[at + 6 : status.index(b"kB", at)]) * 1024


def _read(path: str) -> bytes:
    # os.open/os.read, not open(): a sample reads every process's stat, and a file
    # object costs more than the read itself
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone between the listing and the open
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""
    finally:
        os.close(fd)


class PeakMemory:
    """Samples the RSS of one session's processes in a thread until `stop()`."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.peak = 0
        """The largest sum of the session's RSS seen."""
        self.biggest = 0
        """The largest high-water mark of one of its processes seen."""
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")
        self._thread.start()

    def _sample(self) -> None:
        waits = iter(SAMPLE_S)
        wait = next(waits)
        while not self._done.wait(wait):
            members = _session(self.session)
            self.peak = max(self.peak, sum(members.values()))
            for pid in members:
                self.biggest = max(self.biggest, high_water(pid))
            self.samples += 1
            wait = next(waits, SAMPLE_S[-1])

    def stop(self) -> int:
        """Stop sampling; the larger of the biggest sum and the biggest process, in bytes."""
        self._done.set()
        self._thread.join()
        return max(self.peak, self.biggest)


def wait_with_peak(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` to exit (its returncode set as `wait()` would) and return the peak
    RSS in bytes of the biggest process of its tree as the kernel counted it, or 0 when
    that is no more than this process's own mark (the count a child starts with)."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    biggest = int(usage.ru_maxrss) * 1024  # Linux counts it in KiB
    return biggest if biggest > high_water() else 0


def megabytes(value: int) -> float:
    return value / _MB
