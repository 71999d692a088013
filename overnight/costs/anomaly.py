"""Anomalies in an agent's spending, judged against the agent's own recent history.

Owns the statistic and the watch that applies it to metered attempts as they
arrive. Three measures, per agent:

- **requests per turn**: the requests of the trial an agent is working toward (a
  call tagged with a trial counts for it; an untagged one, for the agent's next);
- **tokens per turn**: the same turn's tokens (input of every kind, and output);
- **spend rate**: USD per active minute (a minute with at least one request).

A measure's history is its last `WINDOW` finished turns (or active minutes). While a
turn is under way its running figure is compared with the history's **median plus
`K` robust standard deviations**, where the robust deviation is 1.4826 × the median
absolute deviation (MAD), floored at `FLOOR` × the median so a perfectly regular
history (MAD 0) does not make every small wobble an anomaly. Median and MAD ignore
the spikes they are meant to catch (one runaway turn in the history does not raise
the bar for the next), unlike a mean and standard deviation. Nothing is judged until
`MIN_HISTORY` turns are finished. A turn is reported at most once per measure.

A turn ends when its trial finishes, when the agent calls for another trial, or when
a person resumes the agent (`RESUMED`): a resume means "try again", so what the agent
does next is judged afresh, and a turn that loops again after the resume is caught
again, as soon as the first was (a turn still counting the requests of the one the
pause stopped, and already reported, would never be).

Knows nothing about pausing an agent or telling anyone: the supervisor turns an
`Anomaly` into a `cost.anomaly` event (which notify delivers) and, for an agent with
`on_anomaly = "pause"`, a pause until a person resumes it.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overnight.records import TrialStatus
from overnight.store import Store

K = 5.0
FLOOR = 0.25
WINDOW = 50
MIN_HISTORY = 5
MEASURES = {
    "requests": "requests per turn",
    "tokens": "tokens per turn",
    "spend_rate": "USD per active minute",
}


@dataclass(frozen=True)
class Bar:
    """What a measure's history says is normal."""

    median: float
    mad: float

    @property
    def threshold(self) -> float:
        return self.median + K * max(1.4826 * self.mad, FLOOR * abs(self.median))


def bar(history: Iterable[float]) -> Bar | None:
    """The bar a history sets; None until it has `MIN_HISTORY` values."""
    values = list(history)
    if len(values) < MIN_HISTORY:
        return None
    median = statistics.median(values)
    return Bar(median, statistics.median(abs(v - median) for v in values))


@dataclass(frozen=True)
class Anomaly:
    agent: str
    measure: str
    value: float
    bar: Bar
    trial: str | None
    requests: int
    """Requests of the turn when it was caught (how soon it was)."""

    @property
    def title(self) -> str:
        return f"cost anomaly: agent {self.agent}'s {MEASURES[self.measure]}"

    @property
    def text(self) -> str:
        return (
            f"agent {self.agent}: {MEASURES[self.measure]} is {self.value:.4g}, above its "
            f"bar of {self.bar.threshold:.4g} (median {self.bar.median:.4g} + {K:g} robust "
            f"deviations; MAD {self.bar.mad:.4g}), after {self.requests} request(s) of the turn"
        )

    def payload(self) -> dict[str, Any]:
        return {
            "measure": self.measure, "value": self.value, "median": self.bar.median,
            "mad": self.bar.mad, "threshold": self.bar.threshold, "trial": self.trial,
            "requests": self.requests, "title": self.title, "text": self.text,
        }  # fmt: skip


@dataclass
class _Turn:
    trial: str | None = None
    requests: int = 0
    tokens: int = 0
    flagged: set[str] = field(default_factory=set)


@dataclass
class _Agent:
    turn: _Turn = field(default_factory=_Turn)
    requests: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    minutes: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    minute: int | None = None
    minute_usd: float = 0.0
    minute_flagged: bool = False


class Watch:
    """Follows one run's attempts and trial ends; `attempt`/`turn_over` return what they
    caught. Not thread-safe: one follower feeds it."""

    def __init__(self) -> None:
        self._agents: dict[str, _Agent] = {}

    def turn_over(self, agent: str) -> None:
        """The agent's trial finished: its turn joins the history."""
        a = self._agents.setdefault(agent, _Agent())
        if a.turn.requests:
            a.requests.append(a.turn.requests)
            a.tokens.append(a.turn.tokens)
        a.turn = _Turn()

    def attempt(self, row: Mapping[str, Any]) -> list[Anomaly]:
        """One metered attempt (a Store `attempts` row)."""
        name = row["agent"]
        a = self._agents.setdefault(name, _Agent())
        trial = row.get("trial")
        if trial is not None and a.turn.trial not in (None, trial):
            self.turn_over(name)  # a call for another trial: the last one's turn is over
        turn = a.turn
        if trial is not None:
            turn.trial = trial
        if row.get("attempt", 1) == 1:
            turn.requests += 1
        turn.tokens += sum(
            int(row.get(k) or 0)
            for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        )
        caught = []
        for measure, value, history in (
            ("requests", turn.requests, a.requests),
            ("tokens", turn.tokens, a.tokens),
        ):
            level = bar(history)
            if measure not in turn.flagged and level is not None and value > level.threshold:
                turn.flagged.add(measure)
                caught.append(Anomaly(name, measure, value, level, turn.trial, turn.requests))
        minute = int(float(row["started_at"]) // 60)
        if a.minute != minute:
            if a.minute is not None:
                a.minutes.append(a.minute_usd)
            a.minute, a.minute_usd, a.minute_flagged = minute, 0.0, False
        a.minute_usd += float(row.get("cost_usd") or 0.0)
        level = bar(a.minutes)
        if not a.minute_flagged and level is not None and a.minute_usd > level.threshold > 0:
            a.minute_flagged = True
            caught.append(
                Anomaly(name, "spend_rate", a.minute_usd, level, turn.trial, turn.requests)
            )
        return caught


FINISHED = tuple(f"trial.{s.value}" for s in TrialStatus if s.final)
RESUMED = "agent.resume_requested"
"""The event a person's resume of an agent records (overnight.agents.supervisor's
AgentControl): the agent's turn is over."""


class RunWatch:
    """A `Watch` fed from the store: one run's new attempts, trial ends and resumes, in
    time order, at most `batch` attempts per `poll`."""

    def __init__(self, store: Store, lab: str, run_id: str, batch: int = 10_000) -> None:
        self.store, self.lab, self.run_id, self.batch = store, lab, run_id, batch
        self.watch = Watch()
        self._attempt = 0
        self._event = 0

    def poll(self) -> list[Anomaly]:
        rows = self.store.attempts(self.lab, after=self._attempt, limit=self.batch)
        if rows:
            self._attempt = rows[-1]["id"]
        ends = self.store.events(
            self.run_id, after=self._event, kinds=(*FINISHED, RESUMED), limit=self.batch
        )
        if ends:
            self._event = ends[-1].id
        merged: list[tuple[float, int, Any]] = [
            (float(r["started_at"]), 1, r) for r in rows if r.get("run_id") == self.run_id
        ]
        merged += [(e.at, 0, e) for e in ends if e.agent is not None]
        caught: list[Anomaly] = []
        for _at, is_attempt, item in sorted(merged, key=lambda x: (x[0], x[1])):
            if is_attempt:
                caught += self.watch.attempt(item)
            else:
                self.watch.turn_over(item.agent)
        return caught
