"""What the lab asks before it runs an agent's change and before it keeps one.

A `Judge` answers for the lab's governance (policies, risk, approvals): the lab
calls it with the paths a trial changed, after the integrity guard and before
the run, and with a measured improvement before the ratchet advances (with the
hidden holdout's concern, when it disputes the improvement and the lab says
`on_divergence = "review"`). It may
block while a human decides; it returns None to go on, or why not. The lab
knows nothing about how the answer is reached: `overnight.governance.governor`
judges in the command center's process, `overnight.governance.remote` asks the
command center from an agent's process (`overnight try`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from overnight.records import Trial


class Judge(Protocol):
    def approve_edits(
        self, agent: str, trial: Trial, paths: Sequence[str], stop: threading.Event
    ) -> str | None:
        """None when the agent may run a trial that changed `paths`, else why not."""

    def approve_keep(
        self,
        agent: str,
        trial: Trial,
        metric: float,
        gain: float,
        stop: threading.Event,
        *,
        concern: str | None = None,
    ) -> str | None:
        """None when the measured improvement may be kept, else why not. `gain` is the
        improvement over the agent's best as a fraction of it (positive = better). With a
        `concern` (the hidden holdout disputes the keep) a human decides, whatever the
        policy would allow; a denial stands."""
