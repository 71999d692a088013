"""What a call cost: the shipped price table, user overrides, and pricing one attempt.

Owns model prices with the dates they took effect, matching a model name
(dated snapshots such as `claude-sonnet-4-5-20250929` match their family), and
turning token counts into USD. An unknown model is *unpriced* (cost `None`),
never $0. Knows nothing about HTTP, budgets or the store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overnight.costs.config import PriceOverride
    from overnight.org.gateway import PriceConfig


@dataclass(frozen=True)
class Price:
    """USD per million tokens, in force from `since` (UTC date) until a later entry."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    since: date = date(2000, 1, 1)

    @property
    def max_input(self) -> float:
        """The dearest way an input token can be billed (a cache write, usually)."""
        return max(self.input, self.cache_read, self.cache_write)


def _p(since: str, inp: float, out: float, read: float, write: float) -> Price:
    return Price(inp, out, read, write, date.fromisoformat(since))


# List prices published by the vendors (standard tier, USD per million tokens).
# Anthropic bills cache writes (5-minute) at 1.25x input and reads at 0.1x;
# OpenAI bills cached input at its own rate and has no cache-write charge.
SHIPPED: dict[str, tuple[Price, ...]] = {
    "claude-opus-4-1": (_p("2025-08-05", 15, 75, 1.5, 18.75),),
    "claude-opus-4": (_p("2025-05-22", 15, 75, 1.5, 18.75),),
    "claude-opus-4-5": (_p("2025-11-24", 5, 25, 0.5, 6.25),),
    "claude-sonnet-4": (_p("2025-05-22", 3, 15, 0.3, 3.75),),
    "claude-sonnet-4-5": (_p("2025-09-29", 3, 15, 0.3, 3.75),),
    "claude-haiku-4-5": (_p("2025-10-15", 1, 5, 0.1, 1.25),),
    "claude-3-5-haiku": (_p("2024-10-22", 0.8, 4, 0.08, 1.0),),
    "gpt-5": (_p("2025-08-07", 1.25, 10, 0.125, 1.25),),
    "gpt-5-mini": (_p("2025-08-07", 0.25, 2, 0.025, 0.25),),
    "gpt-5-nano": (_p("2025-08-07", 0.05, 0.4, 0.005, 0.05),),
    "gpt-5.1": (_p("2025-11-13", 1.25, 10, 0.125, 1.25),),
    "gpt-5-codex": (_p("2025-09-15", 1.25, 10, 0.125, 1.25),),
    "gpt-4.1": (_p("2025-04-14", 2, 8, 0.5, 2),),
    "gpt-4.1-mini": (_p("2025-04-14", 0.4, 1.6, 0.1, 0.4),),
    "gpt-4o": (_p("2024-05-13", 5, 15, 5, 5), _p("2024-10-01", 2.5, 10, 1.25, 2.5)),
    "gpt-4o-mini": (_p("2024-07-18", 0.15, 0.6, 0.075, 0.15),),
}

_SNAPSHOT = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


@dataclass(frozen=True)
class Cost:
    """The price of one attempt; `usd` is None when its model is unpriced."""

    usd: float | None

    @property
    def unpriced(self) -> bool:
        return self.usd is None


class PriceTable:
    """The shipped table with the user's overrides on top. Immutable once built."""

    def __init__(
        self,
        overrides: Mapping[str, PriceConfig] | Mapping[str, PriceOverride] | None = None,
        shipped: Mapping[str, tuple[Price, ...]] = SHIPPED,
    ) -> None:
        self._shipped = dict(shipped)
        self._overrides = {
            name: Price(
                p.input,
                p.output,
                p.input if p.cache_read is None else p.cache_read,
                p.input if p.cache_write is None else p.cache_write,
            )
            for name, p in (overrides or {}).items()
        }
        self._cache: dict[tuple[str, str, date], Price | None] = {}

    def lookup(self, upstream: str, model: str, on: date | None = None) -> Price | None:
        """The price in force `on` (default: today, UTC) for `model` served by `upstream`."""
        day = on or datetime.now(UTC).date()
        key = (upstream, model, day)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = self._lookup(upstream, model, day)
        return self._cache[key]

    def _lookup(self, upstream: str, model: str, day: date) -> Price | None:
        for key in (f"{upstream}/{model}", model):
            if key in self._overrides:
                return self._overrides[key]
        family = model if model in self._shipped else _SNAPSHOT.sub("", model)
        history = self._shipped.get(family)
        if history is None:
            return None
        current = [p for p in history if p.since <= day]
        return current[-1] if current else history[0]

    def cost(
        self,
        upstream: str,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        on: date | None = None,
    ) -> Cost:
        """USD for the given tokens; `input_tokens` excludes both cache kinds.

        Reasoning tokens are part of `output_tokens` (both vendors bill them so),
        so they are not added again.
        """
        price = self.lookup(upstream, model, on)
        if price is None:
            return Cost(None)
        usd = (
            input_tokens * price.input
            + output_tokens * price.output
            + cache_read_tokens * price.cache_read
            + cache_write_tokens * price.cache_write
        ) / 1e6
        return Cost(usd)
