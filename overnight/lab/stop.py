"""Stop rules: when a run ends by itself, and when an agent is paused for crashing.

`[lab.stop]` says when a run has done enough: `target` (the lab's best reached a
value), `plateau` (no new lab best for a number of trials or a time, counted
within one `overnight run`) and `crash_streak` (an agent whose trials crashed,
timed out or were rejected that many times in a row is paused; the run stops
when every agent is paused so). `--trials`, `--for` and Ctrl-C end a run too;
every way of ending has a `Stop` naming its rule, which `overnight run` prints,
records in its `run.stopped` event, and turns into its exit code.

`StopRules` judges each finished trial (and the clock) and records its verdict
in the store before anyone acts on it (write-ahead): a `run.stopping` event
naming the rule, an `agent.paused` event and the agent's `paused` state. A
crash streak is read from the ledger, so it counts across restarts (an agent
paused in an earlier `overnight run` gets one trial in the next before it is
paused again).

Knows nothing about threads, sessions or the terminal: the supervisor acts on
the verdicts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from overnight.lab.ratchet import better
from overnight.org.config import Goal
from overnight.records import BASELINE, Trial, TrialStatus

if TYPE_CHECKING:
    from overnight.lab.lab import Lab

STOPPING = "run.stopping"
PAUSED = "agent.paused"
CRASH_PAUSE = "crash_streak:"
"""How a crash-streak pause's reason begins (it is told apart from other pauses by it)."""
CRASHES = frozenset({TrialStatus.crashed, TrialStatus.timed_out, TrialStatus.rejected})
_S = TrialStatus


@dataclass(frozen=True)
class Stop:
    """Why a run ended: the rule (`target`, `plateau`, `crash_streak`, `trials`, `for`,
    `interrupt`, `agents`), the rule as the user wrote it and what happened (read after
    "stopped by"), and its figures."""

    rule: str
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {**self.data, "rule": self.rule, "detail": self.detail}


def by_trials(trials: int) -> Stop:
    return Stop("trials", f"--trials {trials}: that many trials are done", {"trials": trials})


def by_time(seconds: float) -> Stop:
    return Stop("for", f"--for {_span(seconds)}: the time is up", {"seconds": seconds})


def interrupted() -> Stop:
    return Stop("interrupt", "Ctrl-C (or SIGTERM): run again to resume")


def agents_done() -> Stop:
    return Stop("agents", "its agents: each was paused or had no more work")


@dataclass(frozen=True)
class Verdict:
    """What one finished trial decided: its agent's pause (the reason), the run's stop."""

    pause: str | None = None
    stop: Stop | None = None


def reached(value: float, target: float, goal: Goal) -> bool:
    return value <= target if goal is Goal.minimize else value >= target


class StopRules:
    """`[lab.stop]` for one `overnight run`; build it once the baseline is measured. Its
    methods may be called from any thread."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.config = lab.config.lab.stop
        self.goal = lab.config.lab.goal
        self.fired: Stop | None = None
        self.paused: set[str] = set()
        """Agents paused for their crash streak in this `overnight run`."""
        self._lock = threading.Lock()
        best = lab.best()
        self._best = best
        self._since_best = 0
        self._best_at = time.monotonic()
        trials = lab.store.trials(lab.run.id)
        self._crashes = {a.name: crash_streak(trials, a.name) for a in lab.agents()}

    def at_start(self) -> Stop | None:
        """A target the lab's best reached already (in an earlier run, or the baseline)."""
        with self._lock:
            best = self._best
            if best is not None and best.metric is not None:
                return self._target(best)
            return None

    def after(self, trial: Trial) -> Verdict:
        """Judge one finished trial."""
        if trial.agent == BASELINE or trial.status is _S.interrupted:
            return Verdict()  # the baseline starts the count; an interrupted trial tried nothing
        with self._lock:
            stop: Stop | None = None
            best = self._best
            if (
                trial.status is _S.kept
                and trial.metric is not None
                and (
                    best is None
                    or best.metric is None
                    or better(trial.metric, best.metric, self.goal)
                )
            ):
                self._best, self._since_best, self._best_at = trial, 0, time.monotonic()
                stop = self._target(trial)
            else:
                self._since_best += 1
                limit = self.config.plateau_trials
                if limit is not None and self._since_best >= limit:
                    stop = self._fire(
                        Stop(
                            "plateau",
                            f'plateau = "{self.config.plateau}": no new lab best in '
                            f"{self._since_best} trials{self._best_words()}",
                            {
                                "plateau": self.config.plateau,
                                "trials": self._since_best,
                                **self._best_data(),
                            },
                        )
                    )
            pause = self._crash(trial)
            if pause is not None and set(self._crashes) <= self.paused:
                stop = (
                    self._fire(
                        Stop(
                            "crash_streak",
                            f"crash_streak = {self.config.crash_streak}: every agent was "
                            f"paused after {self.config.crash_streak} crashes in a row",
                            {
                                "crash_streak": self.config.crash_streak,
                                "agents": sorted(self.paused),
                            },
                        )
                    )
                    or stop
                )
            return Verdict(pause, stop)

    def tick(self) -> Stop | None:
        """The clock's rule: a plateau of time."""
        seconds = self.config.plateau_seconds
        if seconds is None:
            return None
        with self._lock:
            idle = time.monotonic() - self._best_at
            if idle < seconds:
                return None
            return self._fire(
                Stop(
                    "plateau",
                    f'plateau = "{self.config.plateau}": no new lab best for '
                    f"{_span(idle)}{self._best_words()}",
                    {
                        "plateau": self.config.plateau,
                        "seconds": round(idle, 1),
                        **self._best_data(),
                    },
                )
            )

    # -- the rules ------------------------------------------------------------------

    def _target(self, best: Trial) -> Stop | None:
        target = self.config.target
        if target is None or best.metric is None or not reached(best.metric, target, self.goal):
            return None
        metric = self.lab.config.lab.metric
        who = "the baseline" if best.agent == BASELINE else f"trial {best.number}, {best.agent}"
        return self._fire(
            Stop(
                "target",
                f"target = {target:g}: the lab's best {metric} {best.metric:.6g} ({who}) "
                "reached it",
                {"target": target, **self._best_data()},
            )
        )

    def _crash(self, trial: Trial) -> str | None:
        """Count the agent's crash streak; the reason it is paused, when it is."""
        name = trial.agent
        streak = self._crashes.get(name, 0) + 1 if trial.status in CRASHES else 0
        self._crashes[name] = streak
        limit = self.config.crash_streak
        if limit is None or streak < limit or name in self.paused:
            return None
        reason = (
            f"{CRASH_PAUSE} its last {streak} trials crashed, timed out or were rejected "
            f"(the last: trial {trial.number}, {trial.reason or trial.status.value}); it "
            "starts again with the next `overnight run`"
        )
        self.paused.add(name)
        store, run_id = self.lab.store, self.lab.run.id
        store.append_event(
            run_id, PAUSED, {"rule": "crash_streak", "streak": streak, "reason": reason},
            agent=name, trial=trial.number,
        )  # fmt: skip
        store.set_agent_state(run_id, name, "paused", reason=reason, rule="crash_streak")
        return reason

    def _fire(self, stop: Stop) -> Stop | None:
        """Record the first rule that fires (before the run acts on it); None after."""
        if self.fired is not None:
            return None
        self.fired = stop
        self.lab.store.append_event(self.lab.run.id, STOPPING, stop.payload())
        return stop

    def _best_words(self) -> str:
        best = self._best
        if best is None or best.metric is None:
            return ""
        who = "the baseline" if best.agent == BASELINE else f"trial {best.number}'s"
        return f" (the best is {who} {best.metric:.6g})"

    def _best_data(self) -> dict[str, Any]:
        best = self._best
        if best is None:
            return {}
        return {"best": best.metric, "best_trial": best.number, "best_agent": best.agent}


def crash_streak(trials: Sequence[Trial], agent: str) -> int:
    """How many of the agent's latest trials in a row crashed, timed out or were rejected
    (interrupted ones are passed over: they tried nothing)."""
    streak = 0
    for trial in reversed(trials):
        if trial.agent != agent or not trial.status.final or trial.status is _S.interrupted:
            continue
        if trial.status not in CRASHES:
            break
        streak += 1
    return streak


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
