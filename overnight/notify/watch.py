"""The night watch: what in a run's events a person would want to be woken for.

Owns the reading of the store's events into `Happening`s: a new lab best (with
its delta and the trial's row in the command center), an agent that crashed, an
agent paused by its crash streak, a brownout's start and its end (how long, how
many trials finished meanwhile), a budget at 50/80/100% (`gateway.budget`), an
approval waiting, a cost anomaly (`cost.anomaly`, the cost-intelligence work's
event), the run's stop (by which rule, with its figures); and the silences of
agents (no event and no LLM turn of theirs) that `Notifier` calls stuck. Knows
nothing about sinks, messages or delivery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overnight.lab.keeps import best_trial
from overnight.lab.ratchet import better
from overnight.org.config import OrgConfig
from overnight.records import BASELINE, IMPORTED, Event, Run, Trial, TrialStatus
from overnight.store import Store

FINAL = {f"trial.{s.value}" for s in TrialStatus if s.final and s is not TrialStatus.interrupted}
QUIET_STATES = {"paused", "waiting", "crashed"}
"""States in which an agent is silent for a reason of its own: never stuck."""


@dataclass(frozen=True)
class Happening:
    """Something worth telling, with the event it came from."""

    kind: str
    title: str
    text: str
    link: str | None = None
    event_id: int | None = None
    agent: str | None = None


@dataclass
class _Agent:
    state: str
    active_at: float
    """When it was last heard of: an event of its own or an LLM turn."""
    attempt: int = 0
    """The id of the last gateway attempt of its seen."""
    running: bool = False
    """A trial of its runs: silence is expected for up to the lab's budget + grace."""


def span(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) else "—"


class Watch:
    """Reads one run's events in order (`take`) and its agents' silences (`silent`).
    Not thread-safe: the notifier's one thread calls it."""

    def __init__(self, store: Store, run: Run, config: OrgConfig) -> None:
        self.store = store
        self.run = run
        self.config = config
        self.lab = config.lab.name
        best = best_trial(store, run, config)
        self.best: Trial | None = best
        now = time.time()
        self.agents = {a.name: _Agent(a.state, now) for a in store.agents(run.id)}
        self.brownouts: dict[str, tuple[float, int]] = {}
        """route -> (when it went down, trials finished by then)."""
        self.finished = 0
        self.stopped = False

    # -- events ----------------------------------------------------------------------

    def take(self, events: Sequence[Event]) -> list[Happening]:
        out: list[Happening] = []
        for event in events:
            if event.run_id != self.run.id:
                continue
            if event.agent is not None:
                agent = self.agents.setdefault(event.agent, _Agent("idle", event.at))
                agent.active_at = max(agent.active_at, event.at)
            happening = self._read(event)
            if happening is not None:
                out.append(happening)
        return out

    def _read(self, e: Event) -> Happening | None:
        p = e.payload
        if e.agent is not None and e.kind.startswith("trial."):
            self.agents[e.agent].running = e.kind == "trial.running"
        if e.kind in FINAL and e.agent not in (BASELINE, IMPORTED):
            self.finished += 1
        if e.kind == "trial.kept":
            return self._kept(e)
        if e.kind == "agent.state" and e.agent is not None:
            self.agents[e.agent].state = str(p.get("state", ""))
            if p.get("state") == "crashed":
                status = p.get("exit_status")
                restart = p.get("restart_in_s")
                return Happening(
                    "crash",
                    f"agent {e.agent} crashed",
                    f"its process ended (exit status {status if status is not None else '?'})"
                    + (f"; overnight restarts it in {restart:g}s" if restart is not None else ""),
                    "/",
                    e.id,
                    e.agent,
                )
            return None
        if e.kind == "agent.paused" and p.get("rule") == "crash_streak":
            return Happening(
                "crash_streak",
                f"agent {e.agent} paused after {p.get('streak')} crashes in a row",
                str(p.get("reason", "")),
                f"/lab#trial-{e.trial}" if e.trial else "/lab",
                e.id,
                e.agent,
            )
        if e.kind == "gateway.brownout":
            route = str(p.get("route"))
            if route in self.brownouts:
                return None
            self.brownouts[route] = (e.at, self.finished)
            return Happening(
                "brownout",
                f"brownout: every model of route {route!r} is down",
                "the LLM agents on it pause (or fall back to the optimizer) until it recovers",
                "/providers",
                e.id,
            )
        if e.kind == "gateway.recovery":
            route = str(p.get("route"))
            began, done = self.brownouts.pop(route, (None, self.finished))
            lasted = p.get("lasted_s")
            if not isinstance(lasted, int | float):
                lasted = e.at - began if began is not None else 0.0
            trials = self.finished - done
            return Happening(
                "brownout",
                f"route {route!r} is back after {span(lasted)} of brownout",
                f"the brownout lasted {span(lasted)}; {trials} trial(s) finished meanwhile",
                "/providers",
                e.id,
            )
        if e.kind == "gateway.budget":
            return self._budget(e)
        if e.kind == "approval.requested":
            return self._approval(e)
        if e.kind == "cost.anomaly":
            text = p.get("text") or p.get("message") or p.get("detail")
            return Happening(
                "cost_anomaly",
                str(p.get("title") or f"cost anomaly{f' of agent {e.agent}' if e.agent else ''}"),
                str(text) if text else json.dumps(dict(p), sort_keys=True, default=str)[:500],
                "/costs",
                e.id,
                e.agent,
            )
        if e.kind == "run.stopped":
            self.stopped = True
            return self._stopped(e)
        return None

    def _kept(self, e: Event) -> Happening | None:
        trial = self._trial(e.trial)
        if trial is None or trial.metric is None or trial.agent == IMPORTED:
            return None
        previous = self.best
        goal = self.config.lab.goal
        if (
            previous is not None
            and previous.metric is not None
            and not better(trial.metric, previous.metric, goal)
        ):
            return None
        self.best = trial
        if trial.agent == BASELINE or previous is None or previous.metric is None:
            return None  # where the run starts, not news
        metric = self.config.lab.metric
        delta = trial.metric - previous.metric
        pct = f" ({delta / abs(previous.metric) * 100:+.2f}%)" if previous.metric else ""
        return Happening(
            "best",
            f"new best {metric} {trial.metric:.6g} (trial {trial.number}, {trial.agent})",
            f"{delta:+.6g}{pct} on the previous best {previous.metric:.6g} "
            f"(trial {previous.number}): {trial.description}",
            f"/lab#trial-{trial.number}",
            e.id,
            trial.agent,
        )

    def _trial(self, number: int | None) -> Trial | None:
        if number is None:
            return None
        kept = [TrialStatus.kept]
        for trial in self.store.trials(self.run.id, statuses=kept, last=20):
            if trial.number == number:
                return trial
        return next(
            (t for t in self.store.trials(self.run.id, statuses=kept) if t.number == number), None
        )

    def _budget(self, e: Event) -> Happening:
        p = e.payload
        scope = "the org" if p.get("agent") is None else f"agent {p.get('agent')}"
        period = "today (UTC)" if p.get("period") == "daily" else "in total"
        percent = p.get("percent")
        return Happening(
            "budget",
            f"budget {percent}% spent: {scope}, {period}",
            f"${float(p.get('spent_usd') or 0):.4f} of ${float(p.get('limit_usd') or 0):.4f} "
            f"{period}" + ("; requests over it are refused" if percent == 100 else ""),
            "/costs",
            e.id,
            p.get("agent"),
        )

    def _approval(self, e: Event) -> Happening:
        p = e.payload
        action = dict(p.get("action") or {})
        what = next(
            (str(action[k]) for k in ("command", "path", "tool", "model") if action.get(k)),
            json.dumps(action, sort_keys=True, default=str)[:200],
        )
        kind = action.get("kind", "action")
        risk = p.get("risk")
        expires = p.get("expires_at")
        until = (
            f" before {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(expires))}"
            if isinstance(expires, int | float)
            else ""
        )
        return Happening(
            "approval",
            f"{e.agent} waits for approval of a {kind}: {what}",
            f"{e.agent} waits for approval of a {kind}: `{what}`. Why: {p.get('reason')}"
            + (f" (risk {risk:.2f})" if isinstance(risk, int | float) else "")
            + f". Answer with `overnight approve {p.get('id')}` or "
            f"`overnight deny {p.get('id')}`{until}.",
            "/approvals",
            e.id,
            e.agent,
        )

    def _stopped(self, e: Event) -> Happening:
        p = e.payload
        trials = [t for t in self.store.trials(self.run.id) if t.status.final]
        ran = [t for t in trials if t.agent not in (BASELINE, IMPORTED)]
        kept = sum(1 for t in ran if t.status is TrialStatus.kept)
        best = best_trial(self.store, self.run, self.config)
        base = next((t for t in trials if t.agent == BASELINE and t.metric is not None), None)
        lines = [f"{len(ran)} trial(s), {kept} kept."]
        metric = self.config.lab.metric
        if best is not None and best.metric is not None:
            line = f"best {metric} {best.metric:.6g} (trial {best.number}, {best.agent})"
            if base is not None and base.metric and best is not base:
                pct = (best.metric - base.metric) / abs(base.metric) * 100
                line += f" vs baseline {_num(base.metric)}: {pct:+.2f}%"
            lines.append(line + ".")
        rule = p.get("rule")
        head = f"stopped by {p.get('detail')}" if rule else "the run stopped"
        return Happening("stopped", f"run {self.run.id}: {head}", " ".join(lines), "/lab", e.id)

    # -- silences --------------------------------------------------------------------

    def silent(self, now: float, longer_than: float) -> dict[str, tuple[float, str]]:
        """Agents that are neither paused, waiting nor crashed and were not heard of for
        more than `longer_than` seconds (plus the lab's budget and grace while a trial of
        theirs runs): name -> (last heard of, state). LLM turns count: the gateway's
        attempts are read for the agents about to be called silent."""
        if self.stopped:
            return {}
        out = {}
        lab = self.config.lab
        for name, agent in self.agents.items():
            allowed = longer_than + (lab.budget + lab.grace if agent.running else 0.0)
            if agent.state in QUIET_STATES or now - agent.active_at <= allowed:
                continue
            turns = self.store.attempts(self.lab, agent=name, after=agent.attempt, limit=1000)
            if turns:
                agent.attempt = int(turns[-1]["id"])
                last = max(float(t["started_at"]) + float(t["latency_s"] or 0) for t in turns)
                agent.active_at = max(agent.active_at, last)
                if now - agent.active_at <= allowed:
                    continue
            out[name] = (agent.active_at, agent.state)
        return out
