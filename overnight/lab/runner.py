"""The budgeted runner: one command, its own process group, a hard deadline, a capped log.

Owns starting the experiment, streaming its output to a per-trial log file
(capped: the head is kept, the middle dropped, the tail kept, so gigabytes of
output cannot fill the disk), finding the metric line as output streams by,
and killing the whole process group at budget + grace. Knows nothing about
git, trials or the store.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overnight import redaction
from overnight.lab.memory import PeakMemory, megabytes, wait_with_peak
from overnight.lab.privacy import user_umask
from overnight.lab.sandbox import KILL_WAIT_S

_NUMBER = rb"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_TAIL_BYTES = 64 * 1024
SHELL = shutil.which("bash") or "/bin/sh"


def metric_pattern(name: str) -> re.Pattern[bytes]:
    """`name: value` (or `name = value`) alone on a line; the last one printed wins."""
    return re.compile(
        rb"^[ \t]*" + re.escape(name.encode()) + rb"[ \t]*[:=][ \t]*(" + _NUMBER + rb")[ \t]*\r?$",
        re.MULTILINE | re.IGNORECASE,
    )


def values_pattern(names: Sequence[str]) -> re.Pattern[bytes]:
    """`name: value` lines for any of `names` (secondary metrics), the name captured."""
    either = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len, reverse=True))
    return re.compile(
        rb"^[ \t]*(" + either + rb")[ \t]*[:=][ \t]*(" + _NUMBER + rb")[ \t]*\r?$",
        re.MULTILINE | re.IGNORECASE,
    )


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    timed_out: bool
    duration_s: float
    bytes_out: int
    truncated: bool
    metric: float | None
    tail: str
    recorded: Mapping[str, float] = field(default_factory=dict)
    """The last value printed for each name in `record` (none when it was nan or inf)."""
    peak_rss_mb: float | None = None
    """Peak resident memory of the process tree (see overnight.lab.memory)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def followed_by(self, evaluated: RunResult) -> RunResult:
        """This run and the `evaluate` after it as one result: the evaluation's metric and
        exit, both runs' time, output and printed values, the larger peak."""
        peaks = [p for p in (self.peak_rss_mb, evaluated.peak_rss_mb) if p is not None]
        return RunResult(
            exit_code=evaluated.exit_code,
            timed_out=evaluated.timed_out,
            duration_s=self.duration_s + evaluated.duration_s,
            bytes_out=self.bytes_out + evaluated.bytes_out,
            truncated=self.truncated or evaluated.truncated,
            metric=evaluated.metric,
            tail=evaluated.tail,
            recorded={**self.recorded, **evaluated.recorded},
            peak_rss_mb=max(peaks) if peaks else None,
        )


def run_budgeted(
    command: str,
    *,
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    metric: str,
    env: Mapping[str, str],
    wrap: Sequence[str] = (),
    max_log: int = 50 * 10**6,
    on_start: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    record: Sequence[str] = (),
) -> RunResult:
    """Run `command` in a shell in `cwd`, appending its output to `log_path`.

    `env` is the whole environment it gets; `wrap` goes before the shell (a sandbox,
    a watchdog). The process and everything it starts share a new process group,
    killed (TERM, then KILL) at `timeout_s` or as soon as `stop` is set. Secrets
    known to this process are redacted from the log and the tail. Lines `name: value`
    for the names in `record` are kept too, and the group's peak memory is measured.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*wrap, SHELL, "-c", command],
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=user_umask(),
    )
    # From here on, an interrupt (Ctrl-C while the baseline runs in the main thread)
    # must not leave the experiment running: it may land in any line below.
    done = threading.Event()
    timed_out = threading.Event()
    memory = PeakMemory(proc.pid)  # start_new_session: the session's id is the leader's pid
    try:
        if on_start is not None:
            on_start(proc.pid)
        assert proc.stdout is not None
        sink = _CappedLog(log_path, max_log, metric_pattern(metric), record)
        reader = threading.Thread(target=sink.drain, args=(proc.stdout,), daemon=True)
        reader.start()

        # A watchdog enforces the deadline and the stop request, so this thread can
        # block in wait() and learn of the exit at once (wait(timeout) polls, adding
        # up to 50 ms to every trial).
        def watchdog() -> None:
            deadline = started + timeout_s
            while not done.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
                if stop is not None and stop.is_set():
                    kill_group(proc.pid)
                    return
                if time.monotonic() >= deadline:
                    timed_out.set()
                    kill_group(proc.pid)
                    return

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        biggest = wait_with_peak(proc)
    except BaseException:
        done.set()
        memory.stop()
        kill_group(proc.pid, leader=proc)
        raise
    done.set()
    peak = max(memory.stop(), biggest)
    duration = time.monotonic() - started
    # Grandchildren that left the group could hold the pipe open; never wait on them forever.
    reader.join(timeout=5)
    if not reader.is_alive():
        proc.stdout.close()
    guard.join()
    sink.close(timed_out=timed_out.is_set(), timeout_s=timeout_s)
    return RunResult(
        exit_code=proc.returncode,
        timed_out=timed_out.is_set(),
        duration_s=duration,
        bytes_out=sink.total,
        truncated=sink.dropped > 0,
        metric=sink.metric,
        tail=sink.tail_text(),
        recorded=dict(sink.recorded),
        peak_rss_mb=megabytes(peak) if peak else None,
    )


def kill_group(pgid: int, leader: subprocess.Popen[bytes] | None = None) -> None:
    """TERM the process group, then KILL it if it has not gone within a few seconds.

    Pass `leader` when no other thread is waiting on it: it is reaped here, or
    its zombie would keep the group "alive" (and outlive us, should our parent
    not reap orphans).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < end:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if leader is not None:
        leader.wait()


def find_marked(marker: str, value: str) -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of every process whose environment has `marker=value`."""
    needle = f"{marker}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        entries = environ.split(b"\0")
        if needle in entries:
            env = dict(
                e.decode("utf-8", "replace").partition("=")[::2] for e in entries if b"=" in e
            )
            found.append((int(entry.name), env))
    return found


def kill_marked(
    marker: str, value: str, spare: Callable[[dict[str, str]], bool] = lambda _env: False
) -> list[int]:
    """Kill every process group whose environment has `marker=value` (orphans of a dead
    run), except those whose environment `spare` says to leave alone."""
    killed = []
    for pid, env in find_marked(marker, value):
        if spare(env):
            continue
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid != os.getpgid(0) and pgid not in killed:
            kill_group(pgid)
            killed.append(pgid)
    return killed


class _CappedLog:
    """Writes output to a file up to a cap, keeps the last bytes, and watches for the metric."""

    def __init__(
        self,
        path: Path,
        cap: int,
        pattern: re.Pattern[bytes],
        record: Sequence[str] = (),
    ) -> None:
        self.fh = path.open("ab")
        self.cap = cap
        self.pattern = pattern
        self.values = values_pattern(record) if record else None
        self._names = {name.lower(): name for name in record}  # matched case-insensitively
        self.recorded: dict[str, float] = {}
        self.written = 0
        self.total = 0
        self.dropped = 0
        self.metric: float | None = None
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._partial = b""
        self._redactor = redaction.StreamRedactor()

    def drain(self, stream: object) -> None:
        read = stream.read1 if hasattr(stream, "read1") else stream.read  # type: ignore[attr-defined]
        while True:
            chunk = read(65536)
            if not chunk:
                break
            self._feed(self._redactor.feed(chunk))
        self._feed(self._redactor.flush())
        self._scan(self._partial + b"\n")
        self._partial = b""

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.total += len(chunk)
        room = self.cap - self.written
        if room > 0:
            head = chunk[:room]
            self.fh.write(head)
            self.fh.flush()  # (the log is read while it grows: the page, a Ray worker's tail)
            self.written += len(head)
        if len(chunk) > max(room, 0):
            self.dropped += len(chunk) - max(room, 0)
        self._tail.append(chunk)
        self._tail_len += len(chunk)
        while self._tail_len - len(self._tail[0]) >= _TAIL_BYTES:
            self._tail_len -= len(self._tail.popleft())
        # scan complete lines only; a metric line may straddle two chunks
        data = self._partial + chunk
        cut = data.rfind(b"\n")
        if cut == -1:
            self._partial = data[-4096:]
            return
        self._scan(data[: cut + 1])
        self._partial = data[cut + 1 :][-4096:]

    def _scan(self, data: bytes) -> None:
        found = None
        for found in self.pattern.finditer(data):  # noqa: B007 - the last one wins
            pass
        if found is not None:
            try:
                self.metric = float(found.group(1))
            except ValueError:
                self.metric = None
        if self.values is not None:
            for line in self.values.finditer(data):
                name, value = self._names[line.group(1).decode().lower()], float(line.group(2))
                if math.isfinite(value):  # the last one wins; nan or inf is no value
                    self.recorded[name] = value
                else:
                    self.recorded.pop(name, None)

    def tail_bytes(self) -> bytes:
        return b"".join(self._tail)[-_TAIL_BYTES:]

    def tail_text(self, lines: int = 40) -> str:
        text = self.tail_bytes().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self, *, timed_out: bool, timeout_s: float) -> None:
        if self.dropped:
            tail = self.tail_bytes()
            kept_tail = tail[-min(len(tail), self.dropped) :]
            self.fh.write(
                f"\n[overnight: output over the {self.cap}-byte cap; "
                f"{self.dropped - len(kept_tail)} bytes dropped here, last {len(kept_tail)} follow]\n".encode()
            )
            self.fh.write(kept_tail)
        if timed_out:
            self.fh.write(
                f"\n[overnight: killed after {timeout_s:.0f}s (budget + grace)]\n".encode()
            )
        self.fh.close()
