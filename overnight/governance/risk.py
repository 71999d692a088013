"""Risk scores and autonomy levels: how signals and an agent's freedom become an effect.

Owns three things:

- **The score.** Each policy signal that holds adds its weight; the score is the
  sum clamped to [0, 1]. A plain sum rather than a noisy-or (1 - Π(1 - w)) because
  a policy author can add it up in their head against the thresholds ("push 0.5 +
  outside the worktree 0.3 = 0.8: review, not deny"), and because it allows
  negative weights for signals that lower risk (a noisy-or cannot).
- **The thresholds.** `score >= deny_at` is deny, `score >= review_at` is review,
  anything lower adds nothing (`[governance] review_at`, `deny_at`).
- **Autonomy.** `curious`: read-only — every action that could write (an edit, a
  keep, a tool overnight does not know, a shell command that is not on the
  read-only allow-list) is denied. `ready`: both thresholds are lowered by
  `READY_SHIFT` (0.2; never below `MIN_THRESHOLD`), and every keep waits for a
  human (review) before the ratchet advances. `embedded`: the thresholds as
  configured, autonomous within policy.

Knows nothing about CEL or policy files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overnight.governance.action import Action, Kind
from overnight.governance.decision import Effect, Hit

READY_SHIFT = 0.2
MIN_THRESHOLD = 0.05
"""A shifted threshold stays above zero: a risk of 0 is never escalated by autonomy."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    review_at: float = 0.5
    deny_at: float = 0.85

    def __post_init__(self) -> None:
        if not (0 < self.review_at <= 1 and 0 < self.deny_at <= 1):
            raise ValueError("review_at and deny_at must be above 0 and at most 1")
        if self.review_at > self.deny_at:
            raise ValueError(
                f"review_at ({self.review_at}) must not be above deny_at ({self.deny_at})"
            )

    def for_autonomy(self, autonomy: str) -> Thresholds:
        """The thresholds in force for an agent of this autonomy level."""
        if autonomy != "ready":
            return self
        return Thresholds(
            max(MIN_THRESHOLD, round(self.review_at - READY_SHIFT, 6)),
            max(MIN_THRESHOLD, round(self.deny_at - READY_SHIFT, 6)),
        )

    def effect(self, risk: float) -> Effect:
        if risk >= self.deny_at:
            return Effect.deny
        if risk >= self.review_at:
            return Effect.review
        return Effect.allow


def score(weights: Iterable[float]) -> float:
    """The risk of an action from the weights of the signals that hold on it."""
    return min(1.0, max(0.0, sum(weights)))


def autonomy_hits(action: Action) -> list[Hit]:
    """What the agent's autonomy level alone says about an action."""
    if action.autonomy == "curious" and not action.read_only:
        what = "a keep" if action.kind is Kind.keep else f"a {action.kind.value} that may write"
        return [
            Hit(
                "autonomy-curious", Effect.deny, f"{what}: curious agents are read-only", "autonomy"
            )
        ]
    if action.autonomy == "ready" and action.kind is Kind.keep:
        return [
            Hit(
                "autonomy-ready",
                Effect.review,
                "ready agents' kept changes wait for a human approval",
                "autonomy",
            )
        ]
    return []


def risk_hit(risk: float, thresholds: Thresholds) -> Hit | None:
    """The thresholds' say on a risk score, when they escalate it."""
    effect = thresholds.effect(risk)
    if effect is Effect.allow:
        return None
    at = thresholds.deny_at if effect is Effect.deny else thresholds.review_at
    return Hit("risk", effect, f"risk {risk:.2f} is at or above {effect.value}_at {at:g}", "risk")
