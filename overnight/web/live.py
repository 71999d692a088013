"""The live picture of a run: agents, trials and brownouts, kept current from the store's events.

Owns one in-memory projection per command center: read from the store once
(agents, trials, events), then moved forward by each new event (`apply`), so a
page renders from memory in milliseconds whatever the size of the run, and the
store is asked only for what is new. Costs (gateway attempts are not events)
are folded in by `set_usage`. Knows nothing about HTTP, HTML or terminals.

Not thread-safe by itself: the event hub holds `lock` around every change and
every read that must be consistent.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from overnight.costs.trials import TrialCosts
from overnight.lab.ratchet import better
from overnight.org.config import Goal
from overnight.records import BASELINE, IMPORTED, AgentRecord, Event, Trial, TrialStatus, UsageRow

RECENT_TRIALS = 5
"""Finished trials a built-in agent's tile lists (it has no terminal to mirror)."""

_FINAL = {s.value for s in TrialStatus if s.final}


@dataclass
class TrialRow:
    """What a page shows of one trial (the diff and log stay in the store)."""

    number: int
    agent: str
    status: str
    description: str
    created_at: float
    updated_at: float
    parent_commit: str = ""
    candidate_commit: str | None = None
    metric: float | None = None
    reason: str | None = None
    duration_s: float | None = None
    tokens: int = 0
    cost_usd: float | None = None
    unpriced: bool = False
    holdout_metric: float | None = None
    flag: str | None = None
    """Why a keep looks suspect (the hidden holdout did not improve with the metric)."""

    @property
    def final(self) -> bool:
        return self.status in _FINAL


@dataclass
class AgentRow:
    name: str
    runtime: str
    model: str | None
    branch: str
    worktree: str
    best_commit: str
    best_metric: float | None
    best_trial: int | None
    state: str
    state_since: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    """The last `agent.state` event's payload beyond the state: reason, until, error..."""
    terminal: str | None = None
    """Its terminal session's name, for agents that run in one."""
    trials: int = 0
    kept: int = 0
    running: int | None = None
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_TRIALS))
    tokens: int = 0
    cost_usd: float = 0.0
    brownout: str | None = None
    """The route it is riding out a brownout of, if any."""


@dataclass
class Brownout:
    agent: str | None
    route: str
    mode: str
    started: float
    ended: float | None = None


@dataclass
class Changes:
    """What one batch of events changed, for the pages to redraw."""

    agents: set[str] = field(default_factory=set)
    trials: set[int] = field(default_factory=set)
    finished: bool = False
    """A trial reached a final status (the plot moves)."""
    kept: bool = False
    brownouts: bool = False
    gateway: bool = False
    approvals: bool = False
    """An approval was requested, answered or expired (the inbox and its badge move)."""
    last_id: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.agents or self.trials or self.finished or self.brownouts or self.gateway
            or self.approvals
        )  # fmt: skip


class LiveRun:
    """The projection. Build with `load`, then feed `apply` every new event in id order."""

    def __init__(
        self,
        run_id: str,
        base_commit: str,
        created_at: float,
        models: Mapping[str, str | None],
        terminals: Mapping[str, str],
    ) -> None:
        self.run_id = run_id
        self.base_commit = base_commit
        self.created_at = created_at
        self.models = dict(models)
        self.terminals = dict(terminals)
        self.agents: dict[str, AgentRow] = {}
        self.trials: dict[int, TrialRow] = {}
        self.brownouts: list[Brownout] = []
        self.last_id = 0
        self.events_seen = 0
        self.finished = 0
        """Final trials, the baseline left out."""
        self.in_flight = 0
        self.version = 0
        """Moves whenever a trial does (the plot is redrawn only then)."""
        self.days: dict[str, float] = {}
        """USD per UTC day of the run's gateway calls."""
        self._best: TrialRow | None = None
        self._best_dirty = True
        self._baseline: TrialRow | None = None
        self.stopped: dict[str, Any] | None = None
        """The stop rule that ended (or is ending) the run: its `run.stopping` or
        `run.stopped` payload; None while it runs on."""
        self.noise_floor: dict[str, Any] | None = None
        """The run's measured noise floor (the `lab.noise_floor` event), once there is one."""
        self.lock = threading.RLock()

    # -- loading ------------------------------------------------------------------------

    def load(self, agents: Iterable[AgentRecord], trials: Iterable[Trial]) -> None:
        for record in agents:
            self._put_agent(record)
        for t in trials:
            self.trials[t.number] = TrialRow(
                number=t.number,
                agent=t.agent,
                status=t.status.value,
                description=t.description,
                created_at=t.created_at,
                updated_at=t.updated_at,
                parent_commit=t.parent_commit,
                candidate_commit=t.candidate_commit,
                metric=t.metric,
                reason=t.reason,
                duration_s=t.duration_s,
                holdout_metric=t.holdout_metric,
                flag=t.flag,
            )
        self._recount()

    def _put_agent(self, record: AgentRecord) -> AgentRow:
        row = self.agents.get(record.name)
        if row is None:
            row = AgentRow(
                name=record.name,
                runtime=record.runtime,
                model=self.models.get(record.name),
                branch=record.branch,
                worktree=record.worktree,
                best_commit=record.best_commit,
                best_metric=record.best_metric,
                best_trial=record.best_trial,
                state=record.state,
                state_since=record.state_since,
                terminal=self.terminals.get(record.name),
            )
            self.agents[record.name] = row
        return row

    def _recount(self) -> None:
        for row in self.agents.values():
            row.trials = row.kept = 0
            row.running = None
            row.recent.clear()
        self.finished = self.in_flight = 0
        for t in sorted(self.trials.values(), key=lambda t: t.number):
            self._count(t, +1)
        self._best_dirty = True

    def _count(self, t: TrialRow, sign: int) -> None:
        if t.final:
            self.finished += sign if t.agent != BASELINE else 0
        else:
            self.in_flight += sign
        row = self.agents.get(t.agent)
        if row is None:
            return
        if t.final:
            row.trials += sign
            if t.status == TrialStatus.kept.value:
                row.kept += sign
            if sign > 0 and t.number not in row.recent:
                row.recent.append(t.number)
        elif sign > 0:
            row.running = t.number
        elif row.running == t.number:
            row.running = None

    # -- events -------------------------------------------------------------------------

    def apply(self, events: Iterable[Event], refresh: Iterable[AgentRecord] = ()) -> Changes:
        """Move the picture forward; `refresh` re-reads agents the events mention but the
        projection has not seen yet (an agent added by a resumed run with a new config)."""
        changes = Changes(last_id=self.last_id)
        for record in refresh:
            if record.name not in self.agents:
                self._put_agent(record)
                changes.agents.add(record.name)
        for event in events:
            if event.id <= self.last_id:
                continue
            self.last_id = changes.last_id = event.id
            self.events_seen += 1
            kind = event.kind
            if kind.startswith("trial.") and event.trial is not None:
                self._trial_event(event, changes)
            elif kind == "agent.state" and event.agent in self.agents:
                row = self.agents[event.agent]
                payload = dict(event.payload)
                row.state = str(payload.pop("state", row.state))
                row.state_since = event.at
                row.detail = payload
                changes.agents.add(row.name)
            elif kind == "agent.brownout":
                self.brownouts.append(
                    Brownout(
                        event.agent,
                        str(event.payload.get("route", "?")),
                        str(event.payload.get("mode", "pause")),
                        float(event.payload.get("started", event.at)),
                    )
                )
                if event.agent in self.agents:
                    self.agents[event.agent].brownout = str(event.payload.get("route", "?"))
                    changes.agents.add(event.agent)
                changes.brownouts = True
            elif kind == "agent.recovered":
                open_ = next(
                    (
                        b
                        for b in reversed(self.brownouts)
                        if b.agent == event.agent and b.ended is None
                    ),
                    None,
                )
                if open_ is None:
                    open_ = Brownout(
                        event.agent,
                        str(event.payload.get("route", "?")),
                        str(event.payload.get("mode", "pause")),
                        float(event.payload.get("started", event.at)),
                    )
                    self.brownouts.append(open_)
                open_.ended = float(event.payload.get("ended", event.at))
                if event.agent in self.agents:
                    self.agents[event.agent].brownout = None
                    changes.agents.add(event.agent)
                changes.brownouts = True
            elif kind in ("run.started", "run.resumed"):
                self.stopped = None
            elif kind in ("run.stopping", "run.stopped"):
                # a stop without a rule (an older run's) says nothing new
                if event.payload.get("rule") or self.stopped is None:
                    self.stopped = {**event.payload, "final": kind == "run.stopped"}
            elif kind == "agent.adopted" and event.agent in self.agents:
                row = self.agents[event.agent]  # it moved to the lab's best (sharing)
                row.best_commit = str(event.payload.get("to_commit", row.best_commit))
                row.best_metric = event.payload.get("to_metric", row.best_metric)
                row.best_trial = event.payload.get("to_trial", row.best_trial)
                changes.agents.add(row.name)
            elif kind in ("holdout.measured", "holdout.diverged") and event.trial in self.trials:
                row_ = self.trials[event.trial]
                if kind == "holdout.measured":
                    row_.holdout_metric = event.payload.get("holdout_metric")
                else:
                    row_.flag = event.payload.get("flag")
                changes.trials.add(row_.number)
                changes.kept = changes.kept or row_.status == TrialStatus.kept.value
            elif kind == "lab.noise_floor":
                self.noise_floor = dict(event.payload)
                changes.kept = True  # the best card shows the floor
            elif kind.startswith("gateway."):
                changes.gateway = True
            elif kind.startswith("approval."):
                changes.approvals = True
            elif event.agent in self.agents:
                changes.agents.add(event.agent)  # started, restarted, nudged: "last seen"
        return changes

    def _trial_event(self, event: Event, changes: Changes) -> None:
        assert event.trial is not None
        status = event.kind.removeprefix("trial.")
        payload = event.payload
        row = self.trials.get(event.trial)
        if row is None:
            row = TrialRow(
                number=event.trial,
                agent=event.agent or "?",
                status=status,
                description=str(payload.get("description") or ""),
                created_at=event.at,
                updated_at=event.at,
            )
            self.trials[event.trial] = row
        else:
            self._count(row, -1)
            row.status = status
            row.updated_at = event.at
        if "metric" in payload:
            metric = payload["metric"]
            row.metric = None if metric is None else float(metric)
        if "reason" in payload:
            row.reason = payload["reason"]
        if "candidate_commit" in payload:
            row.candidate_commit = payload["candidate_commit"]
        if "duration_s" in payload:
            row.duration_s = payload["duration_s"]
        self._count(row, +1)
        self.version += 1
        changes.trials.add(row.number)
        changes.agents.add(row.agent)
        if row.final:
            changes.finished = True
        agent = self.agents.get(row.agent)
        if status == TrialStatus.kept.value:
            changes.kept = True
            self._best_dirty = True
            if agent is not None:
                agent.best_trial = row.number
                agent.best_metric = row.metric
                agent.best_commit = row.candidate_commit or agent.best_commit

    def set_descriptions(self, trials: Iterable[Trial]) -> set[int]:
        """Fill in what events do not carry (a proposal's description is written with no
        event of its own); returns the trials that changed."""
        changed = set()
        for t in trials:
            row = self.trials.get(t.number)
            if row is not None and t.description and row.description != t.description:
                row.description = t.description
                row.parent_commit = t.parent_commit
                changed.add(t.number)
            elif row is not None and not row.parent_commit:
                row.parent_commit = t.parent_commit
        return changed

    def set_usage(self, rows: Iterable[UsageRow]) -> set[str]:
        """Fold in the run's metered gateway calls: tokens and USD per agent, per trial (by
        `overnight.costs.trials.TrialCosts`'s rule: a call tagged with a trial counts for
        it, an untagged one for its agent's next trial) and per UTC day. Returns the agents
        whose figures moved."""
        by_agent: dict[str, list[float]] = {}
        days: dict[str, float] = {}
        shares = TrialCosts(self.trials.values())
        for row in rows:
            acc = by_agent.setdefault(row.agent, [0, 0.0])
            acc[0] += row.tokens
            acc[1] += row.cost_usd or 0.0
            day = datetime.fromtimestamp(row.started_at, UTC).strftime("%Y-%m-%d")
            days[day] = days.get(day, 0.0) + (row.cost_usd or 0.0)
            shares.add(row)
        for number, share in shares.result().items():
            trial = self.trials[number]
            trial.tokens, trial.cost_usd = share.tokens, share.cost_usd
            trial.unpriced = share.unpriced
        self.days = dict(sorted(days.items()))
        moved = set()
        for name, agent in self.agents.items():
            spent, usd = by_agent.get(name, (0, 0.0))
            if (int(spent), round(usd, 9)) != (agent.tokens, round(agent.cost_usd, 9)):
                agent.tokens, agent.cost_usd = int(spent), usd
                moved.add(name)
        return moved

    # -- reading ------------------------------------------------------------------------

    def ordered_trials(self) -> list[TrialRow]:
        return [self.trials[n] for n in sorted(self.trials)]

    def best(self, goal: str) -> TrialRow | None:
        """The lab's best kept trial (the baseline included; an imported history not, as in
        `overnight status`: its figures were measured elsewhere), by the goal."""
        if not self._best_dirty:
            return self._best
        best: TrialRow | None = None
        for t in self.trials.values():
            if t.status != TrialStatus.kept.value or t.metric is None or t.agent == IMPORTED:
                continue
            if best is None or best.metric is None or better(t.metric, best.metric, Goal(goal)):
                best = t
        self._best, self._best_dirty = best, False
        return best

    def baseline(self) -> TrialRow | None:
        if self._baseline is None:
            kept = [
                t
                for t in self.trials.values()
                if t.agent == BASELINE and t.status == TrialStatus.kept.value
            ]
            self._baseline = min(kept, key=lambda t: t.number) if kept else None
        return self._baseline
