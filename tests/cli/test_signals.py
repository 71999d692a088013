"""How `overnight run` answers the signals a shell sends it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tests.helpers.labs import make_lab
from tests.helpers.processes import OVERNIGHT, start, stop
from tests.helpers.store import latest_trials


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_run_started_with_ctrl_c_ignored_ignores_it_to_its_end(tmp_path: Path) -> None:
    """A shell starts a background job with SIGINT ignored, so Ctrl-C meant for the
    foreground does not stop it. The run honours that in every phase, its wrap-up (summary,
    report) included: Ctrl-C sent all along, it ends on its own with all its trials."""
    lab = make_lab(tmp_path / "lab")
    proc = start(
        [*OVERNIGHT, "run", str(lab), "--trials", "4", "--no-ui"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ignore_sigint,
    )  # fmt: skip
    try:
        sent = 0
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
                sent += 1
            try:
                out, err = proc.communicate(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        stop(proc, first=signal.SIGTERM)
    assert proc.returncode == 0, err
    assert sent > 10
    trials = [t for t in latest_trials(lab) if t.agent != "baseline"]
    assert len(trials) == 4 and all(t.status.final for t in trials)
    assert "report: " in out  # the wrap-up ran to its last line
