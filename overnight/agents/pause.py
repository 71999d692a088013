"""The pause file: how an external agent's own process is told to hold, and why.

Owns the file's name and what its first line means. The supervisor (a brownout of
the agent's route, a stop rule's crash streak, a cost anomaly) and the command center
write it in the agent's private directory; the agent's process reads it: it starts
no turn while the file exists, and a pause for a cost anomaly also ends the turn
under way (its CLI is stopped), since a turn looping on tool calls need never end
by itself. A person's pause lets the turn finish. Pauses a person made, and those
for an anomaly, are ended only by a person (`AgentControl.resume`, or deleting the
file). Knows nothing about processes, the store or the web page.
"""

from __future__ import annotations

from pathlib import Path

PAUSE_FILE = "paused"
"""In an external agent's private directory while it must not start a turn (its content
says why); the agent process waits while it exists."""
USER_PAUSE = "paused from the command center"
ANOMALY_PAUSE = "paused for a cost anomaly"
"""The first words of an anomaly's pause; the rest is the anomaly's text."""


def why_paused(home: Path) -> str | None:
    """Why the agent whose private directory is `home` is paused; None if it is not."""
    try:
        return (home / PAUSE_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def by_person(why: str | None) -> bool:
    """Whether a pause is one only a person ends."""
    return why is not None and why.startswith((USER_PAUSE, ANOMALY_PAUSE))


def ends_turn(why: str | None) -> bool:
    """Whether a pause stops the agent's running turn, not only the next."""
    return why is not None and why.startswith(ANOMALY_PAUSE)
