"""The environment variables overnight marks the processes it starts with, to find them again.

Every experiment and every external agent's session carries the run's id, so a
restart can find (and stop, or spare) what an earlier `overnight run` left
behind; an agent's session says whose it is, and an experiment which trial it
runs. Governance reads the same marks to refuse an approval answered from an
agent's process. Imports nothing else of overnight.
"""

from __future__ import annotations

import os

RUN_MARKER = "OVERNIGHT_RUN_ID"
"""In every process overnight starts for a run: its experiments, its agents' sessions. Its
value is `run_mark(...)`, never the bare run id."""
SESSION_MARKER = "OVERNIGHT_SESSION"
"""Set in an external agent's terminal session: its processes outlive `overnight run`."""
AGENT_MARKER = "OVERNIGHT_AGENT"
"""The agent an experiment or a session belongs to."""
TRIAL_MARKER = "OVERNIGHT_TRIAL"
"""The trial number an experiment runs (never set in an agent's own session)."""


def run_mark(root: str | os.PathLike[str], run_id: str) -> str:
    """RUN_MARKER's value for run `run_id` of the lab at `root`: `<run id>@<lab folder>`.

    A run id is the second the run began, so two labs started in the same second (a
    benchmark starting labs side by side, two users on one machine) share one; the lab's
    folder keeps one lab's cleanup from killing the other's experiments.
    """
    return f"{run_id}@{os.path.realpath(root)}"
