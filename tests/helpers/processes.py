"""The `overnight` CLI as a user runs it, and the processes a test starts and always stops.

A long-lived process (`overnight run`, `overnight up`, a gateway) starts with `start` in a
process group of its own, and `stop` ends it however it goes: Ctrl-C first (what most tests
check it answers), then SIGTERM, then SIGKILL to its whole group. `started` does both around
a block, and the `spawn` fixture around a test, so a failing test leaves nothing running. (Its children see SIGINT at its default
whatever shell started the suite: tests/conftest.py sees to that.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

OVERNIGHT = [sys.executable, "-m", "overnight"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`overnight ARGS` to completion, its output captured; past `timeout` seconds it is
    stopped (see `stop`) and subprocess.TimeoutExpired raised."""
    proc = start(
        [*OVERNIGHT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # the timeout, or the suite interrupted
        stop(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start(argv: Sequence[str | Path], **popen: Any) -> subprocess.Popen[Any]:
    """`argv` running in a process group of its own (`popen`: Popen's other arguments)."""
    return subprocess.Popen(argv, process_group=0, **popen)


def stop(
    proc: subprocess.Popen[Any], *, first: int = signal.SIGINT, wait: float = 60
) -> tuple[Any, Any]:
    """Stop a `start`ed process with `first` (Ctrl-C unless said otherwise) and return what
    it printed (what was piped). One that has not stopped `wait` seconds later gets SIGTERM,
    then SIGKILL with its whole process group, and the test fails. (A `first` of SIGKILL
    takes the group too: what a kill -9 of the process left behind.)"""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(first)
    try:
        out, err = proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    else:
        if first == signal.SIGKILL:
            _kill_group(proc)
        return out, err
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.kill()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # gone, but something it left holds its pipes
            proc.wait()
            out = err = None
    _kill_group(proc)
    said = "\n".join(str(part)[-3000:] for part in (out, err) if part)
    raise AssertionError(
        f"{proc.args} did not stop within {wait:g} s of {signal.Signals(first).name}: "
        f"SIGTERM or SIGKILL ended it (exit {proc.returncode})\n{said}"
    )


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    # (a group only a `start`ed process leads: its id is the process's own)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def started(
    argv: Sequence[str | Path], *, first: int = signal.SIGINT, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """`argv` running for the block, then stopped (see `stop`) however the block ended."""
    proc = start(argv, **popen)
    try:
        yield proc
    finally:
        stop(proc, first=first)


def process_gone(pid: int) -> bool:
    """True once `pid` has exited; a zombie waiting for its parent to reap it counts as gone
    (an orphan's parent is PID 1 or a subreaper, which may reap it late or never)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True
