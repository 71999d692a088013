"""Reading a repository to draft its overnight.toml: what `overnight init` guesses, and why.

Owns the guesses: which files an agent edits and which are protected (autoresearch's
layout: `train.py` edited, `prepare.py` protected), how an experiment runs (`uv run`
where the repository uses uv), the metric and its goal from the `name: value` lines the
code prints, the budget from a hint in the code (`TIME_BUDGET = 300`), and a range for
each top-level number in the editable files (a knob). Each guess carries the reason
it is shown with. Reads files only; writes nothing and knows nothing about running a
lab or the template the guesses fill.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overnight.org.knobs import assignment_lines

EVALUATOR_NAMES = ("prepare.py", "evaluate.py", "eval.py", "evaluation.py", "metric.py")
_ENTRY_NAMES = ("train.py", "main.py", "model.py")
MAX_KNOBS = 16
"""Drafted knobs at most: beyond that, the optimizer's search is mostly noise."""

# a `name: value` line the code prints: print(f"val_bpb:   {val_bpb:.6f}"), print("loss:", x)
_PRINTED = re.compile(
    r"""(?:\bprint|\.info|\.write)\(\s*f?["']\s*([A-Za-z_][A-Za-z0-9_]*)\s*[:=]"""
)
# words in a metric's name, and whether less or more is better
_LESS = (
    "loss", "bpb", "bpc", "nll", "error", "err", "perplexity", "ppl", "mse", "rmse", "mae",
    "wer", "cer", "regret", "latency", "seconds", "time", "cost",
)  # fmt: skip
_MORE = (
    "acc", "accuracy", "score", "reward", "return", "f1", "auc", "auroc", "precision",
    "recall", "bleu", "rouge", "map", "iou", "psnr", "ssim", "mfu", "throughput", "r2",
)  # fmt: skip
_TIMING = ("latency", "seconds", "time", "cost", "mfu", "throughput")
"""Words of a figure a run reports about itself, not of what it learned: never the metric
init picks (a user may still choose one)."""
_MEMORY_WORDS = ("vram", "memory", "mem")
_BUDGET_WORDS = re.compile(r"(?:^|_)(?:BUDGET|LIMIT|MAX)(?:_|$)")
_TIME_WORDS = re.compile(r"(?:^|_)(?:TIME|SECONDS?|S|MINUTES?)(?:_|$)")
_FRACTION_WORDS = ("RATIO", "FRAC", "DROPOUT", "PROB", "WARMUP", "WARMDOWN")


@dataclass(frozen=True)
class KnobDraft:
    """A top-level number of an editable file, with a range around its value."""

    name: str
    file: str
    line: int
    source: str
    """The value as written, e.g. `2**19`."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    int_: bool = False
    choices: tuple[int, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Draft:
    """Everything `overnight init` writes into a draft, with where each guess came from."""

    name: str
    editable: list[str]
    protected: list[str]
    run: str
    metric: str
    goal: str
    goal_why: str
    metric_found: bool
    record: list[str] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)
    """Every `name: value` line the code prints, in the order found."""
    budget_s: float = 300.0
    budget_from: str | None = None
    """Where the budget came from (`TIME_BUDGET = 300 in prepare.py`), None: a default."""
    writable: list[str] = field(default_factory=list)
    uv: str | None = None
    """Why the run uses uv (`pyproject.toml + uv.lock`), None when it does not."""
    uv_missing: bool = False
    autoresearch: bool = False
    knobs: list[KnobDraft] = field(default_factory=list)
    skipped_knobs: list[str] = field(default_factory=list)
    """Numbers not drafted as knobs, with why (`WARMUP_RATIO = 0.0` and the like)."""

    @property
    def grace_s(self) -> float:
        # killed at twice the budget (autoresearch's own rule: 5 minutes, killed after 10),
        # and never less than a minute of slack for start-up and evaluation
        return max(self.budget_s, 60.0)


def survey(root: Path) -> Draft:
    """Read the repository at `root` and draft its lab."""
    py = sorted(p.name for p in root.glob("*.py") if p.is_file())
    protected = [p for p in py if p in EVALUATOR_NAMES]
    candidates = [p for p in py if p not in protected]
    preferred = [p for p in _ENTRY_NAMES if p in candidates]
    editable = preferred[:1] or candidates[:1] or ["train.py"]
    entry = editable[0]
    autoresearch = "train.py" in py and "prepare.py" in py

    uv = None
    if (root / "pyproject.toml").is_file() and (root / "uv.lock").is_file():
        uv = "pyproject.toml + uv.lock"
    elif (root / "pyproject.toml").is_file() and shutil.which("uv"):
        uv = "pyproject.toml, and uv on PATH"
    if uv:
        run = f"uv run {entry}"
    else:
        python = "python" if shutil.which("python") or not shutil.which("python3") else "python3"
        run = f"{python} {entry}"

    texts = {name: _read(root / name) for name in py}
    printed: list[str] = []
    for name in [*editable, *protected, *(p for p in py if p not in editable + protected)]:
        for found in _PRINTED.findall(texts.get(name, "")):
            if found not in printed:
                printed.append(found)
    metric, metric_found = _metric(printed)
    goal, goal_why = _goal(metric)
    record = [n for n in printed if n != metric and _is_memory(n)]

    budget_s, budget_from = 300.0, None
    for name in [*protected, *editable, *py]:
        hint = _budget_hint(texts.get(name, ""), name)
        if hint is not None:
            budget_s, budget_from = hint
            break

    knobs: list[KnobDraft] = []
    skipped: list[str] = []
    for name in editable:
        found, passed = _knobs(texts.get(name, ""), name)
        knobs.extend(found)
        skipped.extend(passed)
    if len(knobs) > MAX_KNOBS:
        skipped.extend(f"{k.name} (beyond the first {MAX_KNOBS})" for k in knobs[MAX_KNOBS:])
        knobs = knobs[:MAX_KNOBS]

    return Draft(
        name=re.sub(r"[^A-Za-z0-9_.-]", "-", root.name).strip("-.") or "lab",
        editable=editable,
        protected=protected,
        run=run,
        metric=metric,
        goal=goal,
        goal_why=goal_why,
        metric_found=metric_found,
        record=record,
        printed=printed,
        budget_s=budget_s,
        budget_from=budget_from,
        # the sandbox leaves only the worktree writable; uv must write its cache
        writable=["~/.cache/uv"] if uv else [],
        uv=uv,
        uv_missing=bool(uv) and shutil.which("uv") is None,
        autoresearch=autoresearch,
        knobs=knobs,
        skipped_knobs=skipped,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _metric(printed: list[str]) -> tuple[str, bool]:
    """The printed name most like a metric to judge by: bits per byte, then a validation
    figure, then any loss, error or score."""

    def rank(name: str) -> int:
        words = _words(name)
        if _is_memory(name) or any(w in _TIMING for w in words):
            return 0
        score = 0
        if "bpb" in words or "bpc" in words:
            score += 4
        if {"val", "valid", "validation", "test", "eval", "holdout"} & set(words):
            score += 2
        if any(_says(w) for w in words):
            score += 1
        return score

    ranked = sorted(printed, key=lambda n: -rank(n))
    if ranked and rank(ranked[0]) > 0:
        return ranked[0], True
    return "score", False


def _says(word: str) -> str | None:
    """ "maximize" or "minimize" when a word of a name says which is better, else None."""
    if word in _MORE or word.startswith("acc"):
        return "maximize"
    if word in _LESS or word.startswith(("err", "loss", "perplex")):
        return "minimize"
    return None


def _goal(metric: str) -> tuple[str, str]:
    for word in reversed(_words(metric)):  # the last word names the quantity: val_acc -> acc
        goal = _says(word)
        if goal:
            better = "higher" if goal == "maximize" else "lower"
            return goal, f"{better} {word} is better"
    return "minimize", "nothing in the name says which way is better: a guess, check it"


def _is_memory(name: str) -> bool:
    return any(w in _words(name) or w in name.lower() for w in _MEMORY_WORDS)


def _budget_hint(text: str, filename: str) -> tuple[float, str] | None:
    """A top-level `TIME_BUDGET = 300` (seconds; `_MINUTES` names count minutes)."""
    for name, value, source, _line in _numbers(text):
        seconds = float(value) * (60 if "MINUTE" in name.upper() else 1)
        if _is_budget(name) and 1 <= seconds <= 7 * 86400:
            return seconds, f"{name} = {source} in {filename}"
    return None


def _is_budget(name: str) -> bool:
    """TIME_BUDGET, MAX_TRAIN_SECONDS, TIME_LIMIT_MINUTES: a time that bounds a run (and not
    TOKEN_BUDGET or MAX_STEPS, which count something else)."""
    upper = name.upper()
    return bool(_BUDGET_WORDS.search(upper) and _TIME_WORDS.search(upper))


def _numbers(text: str) -> list[tuple[str, float, str, int]]:
    """(name, value, source, line) of every top-level assignment of a plain number."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not isinstance(target, ast.Name) or value is None:
            continue
        number = _constant(value)
        if number is None:
            continue
        found.append((target.id, number, ast.get_source_segment(text, value) or "", node.lineno))
    return found


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
}  # fmt: skip


def _constant(node: ast.expr) -> int | float | None:
    """The value of a number written with literals and arithmetic (`2**19`, `-3e-4`, `64 * 8`);
    None for anything else (a bool, a string, a call)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _constant(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _constant(node.left), _constant(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            return None  # no 10**10**10 in a config file
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            return None
        return result if isinstance(result, int | float) and math.isfinite(result) else None
    return None


def _knobs(text: str, filename: str) -> tuple[list[KnobDraft], list[str]]:
    drafts, skipped = [], []
    for name, value, source, line in _numbers(text):
        upper = name.upper()
        if name.startswith("__") or "SEED" in upper or _is_budget(name):
            continue  # a version, a random seed, the time budget: not for tuning
        if len(assignment_lines(text, name)) != 1:
            skipped.append(f"{name} (assigned more than once in {filename})")
            continue
        draft = _range(name, value, source, filename, line)
        if draft is None:
            skipped.append(f"{name} = {source} in {filename} (no range around 0; add one by hand)")
        else:
            drafts.append(draft)
    return drafts, skipped


def _range(name: str, value: float, source: str, filename: str, line: int) -> KnobDraft | None:
    upper = name.upper()
    fraction = any(w in upper for w in _FRACTION_WORDS)
    at = functools.partial(KnobDraft, name, filename, line, source)
    if value == 0:
        if fraction:
            return at(low=0.0, high=0.5, why="a fraction now 0: tried from 0 to 0.5")
        return None
    if isinstance(value, int):
        if value > 1 and value & (value - 1) == 0:
            return at(
                choices=(value // 2, value, value * 2),
                why="a power of two: half, as is, or double",
            )
        ends = sorted((value // 2 if value > 1 else value, value * 2))
        return at(low=ends[0], high=ends[1], int_=True, why="a count: x0.5 to x2")
    low, high = sorted((value * 0.5, value * 2.0))
    if fraction and 0 < value <= 1:
        high = min(high, 1.0)
    words = name.upper().split("_")
    learning_rate = "LR" in words or "LEARNING_RATE" in upper or upper.endswith("LR")
    log = learning_rate and low > 0
    why = "a learning rate: x0.5 to x2 on a log scale" if log else "x0.5 to x2 around it"
    return at(low=_round(low), high=_round(high), log=log, why=why)


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def duration_text(seconds: float) -> str:
    """`300` -> "5m", `90` -> "90s", `5400` -> "1h30m": as overnight.toml writes durations."""
    seconds = round(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds > 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m" + (
            f"{seconds % 60}s" if seconds % 60 else ""
        )
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
