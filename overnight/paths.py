"""Where overnight keeps a lab's state: `.overnight/` beside its code, and all that is in it.

    ROOT/.overnight/
      overnight.db                  the store (SQLite; `$OVERNIGHT_DB` may name another)
      lock                          held by the `overnight run` of the lab
      locks/RUN.AGENT               held while one of the agent's trials is in flight
      keys/AGENT                    the agent's virtual key for the gateway (0600)
      logs/RUN/trial-NNNNN.log      a trial's output (and -holdout.log, the holdout's)
      worktrees/RUN/AGENT/          the agent's git worktree, on its own branch
      agents/RUN/AGENT/             the agent's private directory (its CLI's home, pause file)
      slots/                        the local executor's slots (and the GPUs each owns)
      holdout/RUN/                  the clean checkouts the hidden holdout runs in
      reports/RUN/                  `overnight report`'s pages and charts
      gateway.url                   while `overnight run` serves the gateway (and trial desk)
      web.url                       while it serves the command center (0600: it holds a token)
      costs-config.json             the config's part `overnight costs` reads, saved by it

The whole directory is git-excluded and the owner's alone (`overnight.lab.privacy`),
and the sandbox hides it from experiments. Only the names live here; what each file
holds is its owner's business. Imports nothing else of overnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".overnight"
WORKTREES = "worktrees"


@dataclass(frozen=True)
class StateDir:
    """A lab's `.overnight/` (`path`), and the name of everything overnight keeps there."""

    path: Path

    @classmethod
    def of(cls, root: Path) -> StateDir:
        """The state directory of the lab at `root`."""
        return cls(root / STATE_DIR)

    @property
    def database(self) -> Path:
        return self.path / "overnight.db"

    @property
    def cost_config(self) -> Path:
        return self.path / "costs-config.json"

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    def agent_lock(self, run_id: str, agent: str) -> Path:
        return self.path / "locks" / f"{run_id}.{agent}"

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    def key(self, agent: str) -> Path:
        return self.keys / agent

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def trial_log(self, run_id: str, number: int, *, holdout: bool = False) -> Path:
        return self.logs / run_id / f"trial-{number:05d}{'-holdout' if holdout else ''}.log"

    def worktree(self, run_id: str, agent: str) -> Path:
        return self.path / WORKTREES / run_id / agent

    def ahead(self, run_id: str, agent: str) -> Path:
        """The checkout where an agent's next candidate is prepared while its trial runs."""
        return self.path / "ahead" / run_id / agent

    def agent_homes(self, run_id: str) -> Path:
        return self.path / "agents" / run_id

    def agent_home(self, run_id: str, agent: str) -> Path:
        return self.agent_homes(run_id) / agent

    @property
    def slots(self) -> Path:
        return self.path / "slots"

    def holdout(self, run_id: str) -> Path:
        return self.path / "holdout" / run_id

    def reports(self, run_id: str) -> Path:
        return self.path / "reports" / run_id

    @property
    def gateway_url(self) -> Path:
        return self.path / "gateway.url"

    @property
    def web_url(self) -> Path:
        return self.path / "web.url"


def worktree_owner(top: Path) -> tuple[Path, str, str] | None:
    """(lab root, run id, agent) when `top` is an agent's worktree, else None."""
    if top.parent.parent.name == WORKTREES and top.parents[2].name == STATE_DIR:
        return top.parents[3], top.parent.name, top.name
    return None


def in_worktrees(path: Path) -> bool:
    """Whether `path` (resolved) lies in a lab's worktrees, i.e. in an agent's worktree."""
    parts = path.parts
    return any(parts[i] == STATE_DIR and parts[i + 1] == WORKTREES for i in range(len(parts) - 1))
