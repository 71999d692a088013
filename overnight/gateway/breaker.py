"""A circuit breaker for one upstream credential.

Owns the closed -> open -> half-open cycle: consecutive failures open it, a
cooldown later a single probe is let through, its success closes the breaker
and its failure reopens it for twice as long. Knows nothing about HTTP or
what a failure was; time comes from an injected clock so tests need no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class Breaker:
    """Not thread-safe: one gateway event loop owns it."""

    def __init__(
        self,
        failures: int,
        cooldown: float,
        max_cooldown: float,
        clock: Callable[[], float],
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failures
        self._base_cooldown = cooldown
        self._max_cooldown = max(cooldown, max_cooldown)
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.closed
        self._consecutive = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open breaker whose cooldown is over reads half-open."""
        if self._state is BreakerState.open and self._clock() >= self._open_until:
            return BreakerState.half_open
        return self._state

    @property
    def retry_at(self) -> float:
        """When an open breaker next lets a probe through (clock time)."""
        return self._open_until if self._state is BreakerState.open else self._clock()

    def available(self) -> bool:
        """Whether `acquire` would succeed now, without claiming anything."""
        state = self.state
        return state is BreakerState.closed or (
            state is BreakerState.half_open and not self._probing
        )

    def acquire(self) -> bool:
        """Claim the right to send one request; half-open lets exactly one probe through."""
        state = self.state
        if state is BreakerState.closed:
            return True
        if state is BreakerState.half_open and not self._probing:
            if self._state is not BreakerState.half_open:
                self._move(BreakerState.half_open)
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._probing = False
        self._cooldown = self._base_cooldown
        if self._state is not BreakerState.closed:
            self._move(BreakerState.closed)

    def failure(self) -> None:
        self._consecutive += 1
        if self._state is BreakerState.half_open or (
            self._state is BreakerState.closed and self._consecutive >= self._threshold
        ):
            if self._state is BreakerState.half_open:
                self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self._probing = False
            self._open_until = self._clock() + self._cooldown
            self._move(BreakerState.open)

    def release(self) -> None:
        """The request ended without telling whether the upstream is healthy."""
        self._probing = False

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if self._on_change is not None:
            self._on_change(old, new)
