"""Peak memory of an experiment: what `memory_gb` says when the run prints no `peak_vram_mb`.

Owns measuring how much resident memory an experiment's processes held at most, two
ways, and taking the larger:

- **the kernel's high-water mark**: `wait4` reports the peak RSS of the biggest single
  process of the tree (the leader and every descendant reaped below it), exactly,
  spikes between samples included, for free;
- **samples of the whole tree**: a thread reads `/proc/<pid>/stat` of every process in
  the experiment's session (the runner starts each one in a session of its own, and
  bubblewrap keeps its children there) and sums their RSS, which is what a run with
  worker processes (a data loader's) holds together. Pages two processes share are
  counted twice, as `ps` would.

A process that leaves the session (`setsid`, a daemon) is not counted. Knows nothing
about trials, the store or what the numbers are for.
"""

from __future__ import annotations

import os
import subprocess
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MB = 1024 * 1024
SAMPLE_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
"""Seconds between samples: often at the start, so a short run is seen at all, then
every second (a sample reads every process's stat: ~1.6 ms for 120 processes, ~5 ms
for 400, see benchmarks/peak_memory.py). A spike of one process between samples is
still caught, by wait4's high-water mark."""


def session_rss(session: int) -> int:
    """Bytes resident in every process of `session`, now."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        # os.open/os.read, not open(): a sample reads every process's stat, and a file
        # object costs more than the read itself
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:  # gone between the listing and the open
            continue
        try:
            stat = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        # the command's name is in parentheses and may hold spaces: split after it;
        # then state ppid pgrp session ..., and rss (in pages) is the 22nd field
        fields = stat[stat.rfind(b")") + 2 :].split(None, 22)
        if len(fields) > 21 and int(fields[3]) == session:
            total += int(fields[21]) * _PAGE
    return total


class PeakMemory:
    """Samples the RSS of one session's processes in a thread until `stop()`."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")
        self._thread.start()

    def _sample(self) -> None:
        waits = iter(SAMPLE_S)
        wait = next(waits)
        while not self._done.wait(wait):
            self.peak = max(self.peak, session_rss(self.session))
            self.samples += 1
            wait = next(waits, SAMPLE_S[-1])

    def stop(self) -> int:
        """Stop sampling; the largest sum seen, in bytes."""
        self._done.set()
        self._thread.join()
        return self.peak


def wait_with_peak(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` to exit (its returncode set as `wait()` would) and return the peak
    RSS in bytes of the biggest process of its tree, as the kernel counted it."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return int(usage.ru_maxrss) * 1024  # Linux counts it in KiB


def megabytes(value: int) -> float:
    return value / _MB
