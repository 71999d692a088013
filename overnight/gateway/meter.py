"""Metering and budgets: what every attempt used, and what each agent may still spend.

Owns the `Attempt` record, the `MeterSink` protocol it is written to (with an
in-memory `MemorySink`), and `Budgets`: reserve the most a request could cost
before it is sent, settle with the real cost after, under one lock, so
concurrent requests cannot together overrun a limit. Persists nothing: the
store-backed sink and budget seeding are wired in by whoever owns the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol

from overnight.org.gateway import BudgetsConfig, LimitConfig

Outcome = Literal[
    "ok",  # the answer reached the client whole
    "failed_over",  # failed before the first byte; the next candidate was tried
    "rejected",  # the upstream refused the request itself (a 4xx that is the client's fault)
    "stream_error",  # failed after the first byte; the client got an explicit error
    "cancelled",  # the client went away; the upstream request was cancelled
]


@dataclass(slots=True)
class Attempt:
    """One request sent to one upstream with one credential.

    Never changed once recorded. Not a frozen dataclass all the same: one is made per
    attempt, and a frozen one's `__init__` (object.__setattr__ per field) cost 4x."""

    request_id: str
    attempt: int
    """1 for the first try of a request, 2 for its first failover, ..."""
    agent: str
    trial: str | None
    route: str
    """The model alias the client asked for."""
    upstream: str
    model: str
    credential: str
    """The credential's name from the config, never its value."""
    client_protocol: str
    upstream_protocol: str
    stream: bool
    outcome: Outcome
    status: int | None
    """The upstream's HTTP status; None when it never answered."""
    error: str | None
    started_at: datetime
    latency_s: float
    ttft_s: float | None
    """Time to the first byte of answer (first event for a stream)."""
    input_tokens: int = 0
    """Input billed at the full rate: cache reads and writes are counted apart."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    """True when the upstream never reported usage (a cut or cancelled stream) and the
    counts are estimated from what was streamed."""
    cost_usd: float | None = None
    unpriced: bool = False

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


class MeterSink(Protocol):
    """Where attempts go. Called on the gateway's event loop: must return quickly."""

    def record(self, attempt: Attempt) -> None: ...


@dataclass
class MemorySink:
    """Keeps attempts in a list; thread-safe enough for tests (list.append is atomic)."""

    attempts: list[Attempt] = field(default_factory=list)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self.attempts))

    def cost(self, agent: str | None = None) -> float:
        return sum(a.cost_usd or 0.0 for a in self.attempts if agent is None or a.agent == agent)


# --- budgets -----------------------------------------------------------------------------


class BudgetExhausted(Exception):
    """A request would overrun a budget; `str()` is the message the client sees."""

    def __init__(self, scope: str, period: str, limit: float, committed: float) -> None:
        self.scope = scope
        self.period = period
        self.limit = limit
        self.committed = committed
        when = "today (UTC)" if period == "daily" else "in total"
        super().__init__(
            f"budget exhausted: {scope} may spend ${limit:.4f} {when}; "
            f"${committed:.4f} is already spent or reserved by requests in flight. "
            f"Raise [gateway.budgets] in overnight.toml or wait"
            + (" for the next UTC day." if period == "daily" else ".")
        )


@dataclass
class Reservation:
    agent: str
    day: date
    amount: float
    settled: bool = False


@dataclass
class _Account:
    spent_total: float = 0.0
    spent_day: dict[date, float] = field(default_factory=dict)
    reserved_total: float = 0.0
    reserved_day: dict[date, float] = field(default_factory=dict)


class Budgets:
    """Spend per agent and for the whole org, per UTC day and in total. Thread-safe.

    `reserve` admits a request only if its worst-case cost fits under every limit
    together with what is spent and what requests in flight have reserved; so
    the sum of settled costs never exceeds a limit as long as each request's
    real cost stays within its reservation.
    """

    ORG = "*org*"
    THRESHOLDS = (50, 80, 100)
    """Percentages of a limit whose first crossing is told to `on_threshold`."""

    def __init__(
        self,
        config: BudgetsConfig,
        today: Callable[[], date] | None = None,
    ) -> None:
        self._config = config
        self._today = today or (lambda: datetime.now(UTC).date())
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self.on_threshold: Callable[[dict[str, Any]], None] | None = None
        """Told once per limit (and UTC day, for a daily one) and threshold, with the
        limit's scope, period, percent, limit and spend (the gateway makes it an event)."""
        self._crossed: set[tuple[str, str, date | None, int]] = set()

    @property
    def enabled(self) -> bool:
        c = self._config
        limits = [c.org, c.agent, *c.agents.values()]
        return any(x.daily_usd is not None or x.total_usd is not None for x in limits)

    def seed(self, agent: str, total: float, today: float = 0.0) -> None:
        """Restore what `agent` spent before a restart (from the store)."""
        with self._lock:
            for name in (agent, self.ORG):
                acc = self._accounts.setdefault(name, _Account())
                acc.spent_total += total
                day = self._today()
                acc.spent_day[day] = acc.spent_day.get(day, 0.0) + today
            self._crossings(agent, day)  # what was crossed before the restart is old news

    def _limits(self, name: str) -> tuple[str, LimitConfig]:
        if name == self.ORG:
            return "the org", self._config.org
        return f"agent {name!r}", self._config.agents.get(name, self._config.agent)

    def reserve(self, agent: str, amount: float) -> Reservation:
        """Hold `amount` USD for a request, or raise `BudgetExhausted`.

        An amount of 0 (an unpriced model) is still refused once a limit is reached.
        """
        day = self._today()
        exhausted: tuple[BudgetExhausted, list[dict[str, Any]]] | None = None
        with self._lock:
            try:
                self._admit(agent, amount, day)
            except BudgetExhausted as refused:
                exhausted = self._exhausted(agent, refused, day)
            if exhausted is None:
                for name in (agent, self.ORG):
                    acc = self._accounts[name]
                    acc.reserved_total += amount
                    acc.reserved_day[day] = acc.reserved_day.get(day, 0.0) + amount
        if exhausted is not None:
            refusal, crossing = exhausted
            self._tell(crossing)
            raise refusal
        return Reservation(agent, day, amount)

    def _admit(self, agent: str, amount: float, day: date) -> None:
        for name in (agent, self.ORG):
            scope, limits = self._limits(name)
            acc = self._accounts.setdefault(name, _Account())
            if limits.daily_usd is not None:
                committed = acc.spent_day.get(day, 0.0) + acc.reserved_day.get(day, 0.0)
                if committed + amount > limits.daily_usd or committed >= limits.daily_usd:
                    raise BudgetExhausted(scope, "daily", limits.daily_usd, committed)
            if limits.total_usd is not None:
                committed = acc.spent_total + acc.reserved_total
                if committed + amount > limits.total_usd or committed >= limits.total_usd:
                    raise BudgetExhausted(scope, "total", limits.total_usd, committed)

    def _exhausted(
        self, agent: str, exc: BudgetExhausted, day: date
    ) -> tuple[BudgetExhausted, list[dict[str, Any]]]:
        """A refusal is the limit at 100%, even when the spend settled so far is below it
        (what requests in flight reserved fills the rest)."""
        name = self.ORG if exc.scope == "the org" else agent
        key = (name, exc.period, day if exc.period == "daily" else None, 100)
        if key in self._crossed:
            return exc, []
        self._crossed.add(key)
        acc = self._accounts.get(name, _Account())
        spent = acc.spent_day.get(day, 0.0) if exc.period == "daily" else acc.spent_total
        return exc, [self._payload(name, exc.period, 100, exc.limit, spent)]

    def _crossings(self, agent: str, day: date) -> list[dict[str, Any]]:
        """Thresholds newly reached by what `agent` and the org spent (lock held)."""
        out = []
        for name in (agent, self.ORG):
            _, limits = self._limits(name)
            acc = self._accounts.get(name, _Account())
            for period, limit, spent in (
                ("daily", limits.daily_usd, acc.spent_day.get(day, 0.0)),
                ("total", limits.total_usd, acc.spent_total),
            ):
                if not limit:
                    continue
                for percent in self.THRESHOLDS:
                    key = (name, period, day if period == "daily" else None, percent)
                    if spent >= limit * percent / 100 and key not in self._crossed:
                        self._crossed.add(key)
                        out.append(self._payload(name, period, percent, limit, spent))
        return out

    def _payload(
        self, name: str, period: str, percent: int, limit: float, spent: float
    ) -> dict[str, Any]:
        return {
            "agent": None if name == self.ORG else name, "period": period, "percent": percent,
            "limit_usd": limit, "spent_usd": round(spent, 6),
        }  # fmt: skip

    def _tell(self, crossings: list[dict[str, Any]]) -> None:
        if self.on_threshold is not None:
            for crossing in crossings:
                self.on_threshold(crossing)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace the reservation by the real cost (idempotent)."""
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            for name in (reservation.agent, self.ORG):
                acc = self._accounts.setdefault(name, _Account())
                acc.reserved_total -= reservation.amount
                acc.reserved_day[reservation.day] = (
                    acc.reserved_day.get(reservation.day, 0.0) - reservation.amount
                )
                acc.spent_total += cost
                acc.spent_day[reservation.day] = acc.spent_day.get(reservation.day, 0.0) + cost
            crossings = self._crossings(reservation.agent, reservation.day)
        self._tell(crossings)

    def spent(self, agent: str | None = None, day: date | None = None) -> float:
        """Settled spend of `agent` (None: the org), on `day` or (None) in total."""
        with self._lock:
            acc = self._accounts.get(self.ORG if agent is None else agent, _Account())
            return acc.spent_total if day is None else acc.spent_day.get(day, 0.0)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Spent and reserved per account, today and in total, for health pages."""
        day = self._today()
        with self._lock:
            return {
                name: {
                    "spent_total": acc.spent_total,
                    "spent_today": acc.spent_day.get(day, 0.0),
                    "reserved": acc.reserved_total,
                }
                for name, acc in self._accounts.items()
            }
