"""The `overnight` CLI as a user runs it, and the processes a test starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OVERNIGHT = [sys.executable, "-m", "overnight"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`overnight ARGS` to completion, its output captured."""
    return subprocess.run(
        [*OVERNIGHT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


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
