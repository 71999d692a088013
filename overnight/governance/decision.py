"""The decision: what policy said about one action, and why.

Owns the effect scale (`allow` < `review` < `deny`: the strictest wins), the
record of what matched (`Hit`: a rule, a risk signal, the autonomy level, the
risk thresholds, or a rule that failed to evaluate), and the JSON form every
consumer uses (the CLI's `--json`, the audit record, the hook's reply).

Standard library only. Knows nothing about CEL, policy files or the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Effect(StrEnum):
    allow = "allow"
    review = "review"
    deny = "deny"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Effect.allow: 0, Effect.review: 1, Effect.deny: 2}


def strictest(effects: Any) -> Effect:
    """The strictest of `effects` (deny > review > allow); allow when there are none."""
    out = Effect.allow
    for effect in effects:
        if _RANK[effect] > _RANK[out]:
            out = effect
    return out


@dataclass(frozen=True, slots=True)
class Hit:
    """Something that matched an action.

    `source` says what kind: a policy file's name for its rules and signals,
    `autonomy` for the agent's autonomy level, `risk` for the risk thresholds.
    A signal has `effect` None and a `weight`."""

    id: str
    effect: Effect | None
    reason: str
    source: str
    weight: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "source": self.source, "reason": self.reason}
        if self.effect is None:
            out["weight"] = self.weight
        else:
            out["effect"] = self.effect.value
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one action: its effect, everything that led to it, the risk score,
    the thresholds in force for the agent's autonomy, and the policy version."""

    effect: Effect
    rules: tuple[Hit, ...]
    """Rules whose `when` held, plus the autonomy level's and the risk thresholds' say,
    plus any rule that failed to evaluate (as deny): whatever set an effect."""
    signals: tuple[Hit, ...]
    risk: float
    review_at: float
    deny_at: float
    autonomy: str
    policy_version: str
    latency_us: float

    @property
    def reason(self) -> str:
        """Why, in one line: the reasons of everything that set the final effect."""
        why = [h.reason for h in self.rules if h.effect is self.effect]
        if not why:
            return "no rule matched and the risk is low"
        return "; ".join(dict.fromkeys(why))

    @property
    def rule_ids(self) -> list[str]:
        return [h.id for h in self.rules]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.effect.value,
            "reason": self.reason,
            "rules": [h.to_dict() for h in self.rules],
            "signals": [h.to_dict() for h in self.signals],
            "risk": round(self.risk, 6),
            "thresholds": {"review_at": self.review_at, "deny_at": self.deny_at},
            "autonomy": self.autonomy,
            "policy_version": self.policy_version,
            "latency_us": round(self.latency_us, 1),
        }
