"""What the command center reads and steers, and the reads it makes on demand.

Owns `Sources`: the run's store, its org config, the lab's directory (for git
diffs), the gateway's address (for route health), the agents' control
(pause / resume / restart) and the lab's governance (approvals, audit), as the
daemon hands them over; plus the reads a page
makes when asked (a worktree's diff, a trial's log, costs, budgets, route
health). All of it goes through the Store API, `overnight.lab` helpers and the
gateway's own `/health`; no SQL here. Knows nothing about HTML or HTTP routing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overnight.agents.supervisor import AgentControl
from overnight.costs.config import agent_limit
from overnight.costs.overview import Overview, overview
from overnight.governance.governor import Governor
from overnight.lab.git import Git, GitError
from overnight.org.config import OrgConfig
from overnight.org.gateway import LimitConfig
from overnight.records import Run, Trial, UsageRow
from overnight.sessions.tmux import TmuxBackend
from overnight.store import Store

MAX_DIFF = 400_000
"""Characters of a diff a page shows; the rest is cut with a note."""


@dataclass
class Sources:
    store: Store
    run: Run
    config: OrgConfig
    root: Path
    """The lab's directory (its git repository)."""
    state_dir: Path
    gateway_url: str | None = None
    control: AgentControl | None = None
    terminals: Mapping[str, str] = field(default_factory=dict)
    """agent -> its tmux session, for agents that run in a terminal."""
    tmux: TmuxBackend | None = None
    governor: Governor | None = None
    """The lab's governance: with it the page has its approvals inbox and audit views."""

    @property
    def models(self) -> dict[str, str | None]:
        return {name: cfg.model for name, cfg in self.config.agent_names()}

    # -- diffs and trials -------------------------------------------------------------

    def worktree_diff(self, worktree: str, best_commit: str) -> str:
        """What an agent has changed in its worktree since its best commit, committed or not
        (new files included)."""
        git = Git(Path(worktree))
        try:
            untracked = [p for p in git.run("ls-files", "--others", "--exclude-standard", "-z")
                         .split("\0") if p]  # fmt: skip
            diff = git.run("diff", best_commit, "--")
            for path in untracked[:50]:
                diff += git.run("diff", "--no-index", "--", "/dev/null", path, check=False)
        except (GitError, OSError) as exc:
            return f"(no diff: {exc})"
        return _cap(diff)

    def commit_diff(self, old: str, new: str) -> str:
        try:
            return _cap(Git(self.root).run("diff", old, new, "--"))
        except (GitError, OSError) as exc:
            return f"(no diff: {exc})"

    def trial(self, number: int, agent: str) -> Trial | None:
        """One trial, whole (diff and log tail included)."""
        return next(
            (t for t in self.store.trials(self.run.id, agent=agent) if t.number == number), None
        )

    # -- money ------------------------------------------------------------------------

    def usage(self) -> list[UsageRow]:
        """Every gateway call of this run: who, which trial, when, tokens and USD."""
        return self.store.usage_rows(self.run.id)

    def attempt_count(self) -> int:
        """How many gateway attempts this run made (from the cost rollup: cheap)."""
        return sum(g.attempts for g in self.store.cost_groups(self.run.lab, self.run.id))

    def cost_overview(self) -> Overview:
        """The run's costs, forecast, anomalies and advice (overnight.costs)."""
        return overview(self.store, self.config, self.run)

    def budgets(self) -> list[dict[str, Any]]:
        """Each limit the gateway enforces, what is spent against it, and what is left."""
        gateway = self.config.gateway
        if gateway is None:
            return []
        lab = self.config.lab.name
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        rows: list[dict[str, Any]] = []

        def add(who: str, limit: LimitConfig, agent: str | None) -> None:
            if limit.total_usd is not None:
                spent = self.store.spend(lab, agent=agent)
                rows.append(_budget_row(who, "total", limit.total_usd, spent))
            if limit.daily_usd is not None:
                spent = self.store.spend(lab, agent=agent, since=midnight)
                rows.append(_budget_row(who, "today (UTC)", limit.daily_usd, spent))

        add("org", gateway.budgets.org, None)
        for name, cfg in self.config.agent_names():
            limit = agent_limit(gateway, name, cfg.budget)
            if limit is not None:
                add(name, limit, name)
        return rows

    # -- providers --------------------------------------------------------------------

    def gateway_health(self) -> dict[str, Any] | None:
        """The gateway's own `/health` (routes, candidates, breakers; budgets), or None."""
        if not self.gateway_url:
            return None
        try:
            with urllib.request.urlopen(self.gateway_url.rstrip("/") + "/health", timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                data["read_at"] = time.time()
                return data
        except (OSError, ValueError) as exc:
            return {"status": "unreachable", "error": str(exc), "routes": []}


def _budget_row(who: str, period: str, limit: float, spent: float) -> dict[str, Any]:
    return {
        "who": who,
        "period": period,
        "limit": limit,
        "spent": spent,
        "left": max(0.0, limit - spent),
        "used_pct": min(100.0, spent / limit * 100) if limit else 100.0,
    }


def _cap(diff: str) -> str:
    if len(diff) <= MAX_DIFF:
        return diff
    return diff[:MAX_DIFF] + f"\n... ({len(diff) - MAX_DIFF} more characters not shown)\n"
