"""The lab notebook: what every agent of a run tried and how it ended, compact enough for a prompt.

One rendering of a run's trials, read by everyone who must not repeat the others'
work: the `llm` runtime puts it in every proposal's prompt, an external CLI agent
gets it in the brief that opens each of its conversations (and, each later turn,
the lines that are new since its previous turn), and a person or an agent's CLI
reads it with `overnight notes`.

Each finished trial is one line: its number, agent, outcome, metric, the delta
against the lab's best at the moment it finished and against the baseline, its
description and, when it was not kept, why. The kept trials come first (they say
what works; at most half the lines), then what is being tried right now, then
everything else newest first, down to a cap in lines and characters; what did
not fit is counted ("... 40 older trials not shown (35 discarded, 5 crashed)").

Pure: reads `Trial` records. Knows nothing about the store's tables, git, or
who is reading.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from overnight.lab.ratchet import better
from overnight.org.config import Goal, LabConfig
from overnight.records import BASELINE, Trial, TrialStatus
from overnight.store import Store

MAX_LINES = 80
"""Trial lines in one rendering of the notebook."""
MAX_CHARS = 12_000
"""Characters of one rendering (about 3k tokens): the header always fits, trial lines
stop where the next would pass it."""
MAX_NEWS = 20
"""Trial lines in a turn's news; the rest are counted and left to `overnight notes`."""
MAX_DESCRIPTION = 200
MAX_REASON = 120
"""Characters of a description and of a reason (first line only: tracebacks stay in logs)."""
_S = TrialStatus


@dataclass(frozen=True)
class Entry:
    """A finished trial as the notebook sees it: with the lab's best when it finished."""

    trial: Trial
    best_before: float | None
    """The lab's best metric (baseline included) just before this trial finished."""
    new_best: bool
    """A keep that moved the lab's best (an agent's keep may only beat its own best)."""


def entries(trials: Sequence[Trial], goal: Goal) -> list[Entry]:
    """Every finished trial in the order they finished, each with the best it faced.

    Agents finish out of number order, so "the best at the time" follows the finishing
    time, not the trial number."""
    done = sorted(
        (t for t in trials if t.status.final),
        key=lambda t: (t.finished_at if t.finished_at is not None else t.updated_at, t.number),
    )
    out: list[Entry] = []
    best: float | None = None
    for trial in done:
        value = trial.metric
        moves = (
            trial.status is _S.kept
            and value is not None
            and math.isfinite(value)
            and (best is None or better(value, best, goal))
        )
        out.append(Entry(trial, best, moves))
        if moves:
            best = value
    return out


def render(
    trials: Sequence[Trial],
    metric: str,
    goal: Goal,
    *,
    reader: str | None = None,
    exclude: int | None = None,
    max_lines: int = MAX_LINES,
    max_chars: int = MAX_CHARS,
) -> str:
    """The whole notebook: a header (baseline, best, counts), then kept trials, trials in
    flight, and the rest, newest first, within the caps. `reader`'s own trials are marked
    "(you)"; `exclude` leaves out one trial (the one being proposed right now)."""
    trials = [t for t in trials if t.number != exclude]
    found = entries(trials, goal)
    baseline = _baseline(found)
    best = _best(found, goal)
    tried = [e for e in found if e.trial.agent != BASELINE]
    direction = "lower is better" if goal is Goal.minimize else "higher is better"
    counts = Counter(e.trial.status.value for e in tried)
    agents = len({e.trial.agent for e in tried})
    summary = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    head = [f"metric: {metric} ({direction})"]
    head.append(
        f"trials: {len(tried)} by {agents} agent{'s' if agents != 1 else ''} ({summary})"
        if tried
        else "trials: none yet besides the baseline"
    )
    head.append(
        f"baseline (the unchanged code): {metric}={_num(baseline)}"
        if baseline is not None
        else "baseline (the unchanged code): not measured yet"
    )
    if best is not None and best.trial.agent != BASELINE:
        t = best.trial
        head.append(
            f"best so far: {metric}={_num(t.metric)}{_vs_baseline(t.metric, baseline)} by "
            f"{_who(t.agent, reader)} in #{t.number}: {_description(t)}"
        )
    elif baseline is not None:
        head.append("best so far: the baseline (nothing has beaten it yet)")

    running = [
        t for t in trials if not t.status.final and t.agent != BASELINE and t.description.strip()
    ]
    kept = [e for e in reversed(tried) if e.trial.status is _S.kept]
    rest = [e for e in reversed(tried) if e.trial.status is not _S.kept]

    def in_flight(t: Trial) -> str:
        return f"#{t.number} {_who(t.agent, reader)}: {_description(t)}"

    def finished(e: Entry) -> str:
        return line(e, metric, baseline, reader)

    # (title, the trials, how each reads, most lines): kept trials take at most half the
    # lines, so the latest failures stay in view. Lines are written only when shown: a
    # night's run has thousands of trials and the notebook is read every turn.
    sections: list[tuple[str, Sequence[Any], Callable[[Any], str], int]] = [
        ("kept (newest first):", kept, finished, max_lines // 2),
        ("being tried right now (do not duplicate):", running, in_flight, max_lines),
        ("discarded, crashed and the rest (newest first):", rest, finished, max_lines),
    ]
    out = list(head)
    size = sum(len(s) + 1 for s in out)
    shown = 0
    full = False  # once a line does not fit, none after it is shown: no gaps in the story
    left_out: Counter[str] = Counter()
    for title, items, write, limit in sections:
        opened = False
        for taken, item in enumerate(items):
            text = None if full or taken >= limit else write(item)
            cost = 0 if text is None else len(text) + 1 + (0 if opened else len(title) + 2)
            if text is not None and (shown >= max_lines or size + cost > max_chars):
                full, text = True, None
            if text is None:
                left_out[item.trial.status.value if isinstance(item, Entry) else "in flight"] += 1
                continue
            if not opened:
                out += ["", title]
                opened = True
            out.append(text)
            size += cost
            shown += 1
    if left_out:
        total = sum(left_out.values())
        detail = ", ".join(f"{n} {status}" for status, n in left_out.most_common())
        out += ["", f"... {total} older trial{'s' if total != 1 else ''} not shown ({detail})"]
    return "\n".join(out)


def news(
    trials: Sequence[Trial],
    told: Collection[int],
    metric: str,
    goal: Goal,
    *,
    reader: str,
    max_lines: int = MAX_NEWS,
) -> str | None:
    """Other agents' trials that finished since the reader was last told (`told`: the
    trial numbers it has heard of), newest first, with the lab's best as it stands now;
    None when there is nothing new."""
    found = entries(trials, goal)
    fresh = [
        e
        for e in reversed(found)
        if e.trial.number not in told and e.trial.agent not in (BASELINE, reader)
    ]
    if not fresh:
        return None
    baseline = _baseline(found)
    out = ["New in the lab notebook since your last turn (other agents' trials, newest first):"]
    out += [line(e, metric, baseline, reader) for e in fresh[:max_lines]]
    if len(fresh) > max_lines:
        out.append(f"... and {len(fresh) - max_lines} more (run `overnight notes` for all)")
    best = _best(found, goal)
    if best is not None and best.trial.agent != BASELINE:
        t = best.trial
        out.append(
            f"The lab's best is now {metric}={_num(t.metric)}{_vs_baseline(t.metric, baseline)}"
            f" by {_who(t.agent, reader)} in #{t.number}."
        )
    return "\n".join(out)


def finished(trials: Sequence[Trial]) -> set[int]:
    """The numbers of the finished trials: what a reader of the notebook has now seen."""
    return {t.number for t in trials if t.status.final}


def read(store: Store, run_id: str, lab: LabConfig, reader: str | None = None) -> str:
    """The notebook of a run, as it stands in the store."""
    return render(store.trials(run_id), lab.metric, lab.goal, reader=reader)


def line(entry: Entry, metric: str, baseline: float | None, reader: str | None = None) -> str:
    """One finished trial: `#12 t-2 discarded score=0.43 (+0.05 vs the best then, -12%
    vs baseline): what it tried [why it was not kept]`."""
    t = entry.trial
    text = f"#{t.number} {_who(t.agent, reader)} {t.status.value}"
    if t.metric is not None and math.isfinite(t.metric):
        deltas = []
        if entry.best_before is not None:
            delta = f"{t.metric - entry.best_before:+.4g} vs the best then"
            deltas.append(f"NEW BEST, {delta}" if entry.new_best else delta)
        elif entry.new_best:
            deltas.append("NEW BEST")
        if baseline:
            deltas.append(f"{(t.metric - baseline) / abs(baseline) * 100:+.1f}% vs baseline")
        text += f" {metric}={_num(t.metric)}" + (f" ({', '.join(deltas)})" if deltas else "")
    text += f": {_description(t)}"
    reason = (t.reason or "").strip().split("\n")[0]
    if reason and t.status is not _S.kept:
        text += f" [{_cut(reason, MAX_REASON)}]"
    return text


def _baseline(found: Sequence[Entry]) -> float | None:
    for e in found:
        if e.trial.agent == BASELINE and e.trial.status is _S.kept:
            return e.trial.metric
    return None


def _best(found: Sequence[Entry], goal: Goal) -> Entry | None:
    best: Entry | None = None
    for e in found:
        m = e.trial.metric
        if e.trial.status is not _S.kept or m is None or not math.isfinite(m):
            continue
        if best is None or best.trial.metric is None or better(m, best.trial.metric, goal):
            best = e
    return best


def _vs_baseline(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return ""
    return f" ({(value - baseline) / abs(baseline) * 100:+.1f}% vs baseline)"


def _who(agent: str, reader: str | None) -> str:
    return f"{agent} (you)" if agent == reader else agent


def _description(t: Trial) -> str:
    first = (t.description or "").strip().split("\n")[0]
    return _cut(first, MAX_DESCRIPTION) if first else "(no description)"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.6g}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
