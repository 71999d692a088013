"""Constraints on a trial's recorded values: `peak_vram_mb <= 70000` read strictly, and judged.

Owns the little language of `[lab] constraints`: a name, one of `<`, `<=`, `>`, `>=`,
and a finite number, nothing else, so a typo is an error when the file is read rather
than a rule that silently never fires. Part of org code (checked when the file is
read); the lab judges trials by it. Knows nothing about trials, the store or where
the values come from.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
_NAME = r"[A-Za-z_][A-Za-z0-9_./-]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FORM = re.compile(rf"^\s*({_NAME})\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")
# what people write instead, and what they mean
_LOOKALIKES = {"=<": "<=", "=>": ">=", "≤": "<=", "≥": ">="}


class ConstraintSyntax(ValueError):
    """Not a constraint; `fix` says what to write instead."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.bound:g}"

    def violation(self, values: Mapping[str, float]) -> str | None:
        """Why `values` break this constraint, or None when they keep it."""
        value = values.get(self.name)
        if value is None:
            return f"constraint {self}: the run printed no `{self.name}: <number>` line"
        if not _OPS[self.op](value, self.bound):
            return f"constraint {self} broken: {self.name} = {value:g}"
        return None


def parse(text: str) -> Constraint:
    """`NAME OP NUMBER`, or ConstraintSyntax saying what is wrong and the fix."""
    match = _FORM.match(text)
    if match is not None:
        bound = float(match.group(3))
        if not math.isfinite(bound):  # 1e999
            raise ConstraintSyntax(
                f"{text!r}: {match.group(3)} is too large", "write a finite bound"
            )
        return Constraint(match.group(1), match.group(2), bound)
    example = 'e.g. "peak_vram_mb <= 70000"'
    for wrong, right in _LOOKALIKES.items():
        fixed = text.replace(wrong, right)
        if wrong in text and _FORM.match(fixed):
            raise ConstraintSyntax(
                f"{text!r} uses {wrong!r}, which is not an operator here",
                f'write "{fixed.strip()}"',
            )
    if "==" in text or "!=" in text or re.search(r"(?<![<>])=", text):
        raise ConstraintSyntax(
            f"{text!r} asks for (in)equality; a constraint is a bound",
            f"use <, <=, > or >=, {example}",
        )
    raise ConstraintSyntax(
        f"{text!r} is not a constraint",
        f"write NAME OP NUMBER, with OP one of <, <=, >, >=, {example}",
    )
