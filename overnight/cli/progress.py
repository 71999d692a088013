"""The terminal view of `overnight run` and `overnight up`.

Owns the header, a line per finished trial, the live panel (trials done, what
is running, the best so far, elapsed time and ETA; plain lines instead when
stdout is not a terminal) and the summary at the end. Knows nothing about how
the run is driven: the supervisor calls `finished` for each trial.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from overnight.cli.common import out
from overnight.records import IN_FLIGHT
from overnight.units import figure


class Progress:
    """The live terminal view of a run (plain lines when stdout is not a terminal)."""

    def __init__(self, lab: Any, trials: int | None, seconds: float | None, live: bool) -> None:
        self.lab = lab
        self.target = trials
        self.seconds = seconds
        self.started = time.monotonic()
        self.done = 0
        self.last: Any = None
        # best and baseline change only when a trial finishes: read them then, not
        # on every refresh (each read scans the run's kept trials)
        self.best, self.base = lab.best(), lab.baseline()
        self.tty = live and out.is_terminal
        self._lock = threading.Lock()
        cfg = lab.config.lab
        what = f"{'resuming' if lab.resumed else 'starting'} run {lab.run.id}"
        out.print(f"[bold]overnight[/] · {cfg.name} · {what} · {cfg.metric} ({cfg.goal.value})")
        if lab.requeued:
            out.print(
                f"re-queued interrupted trial(s): {', '.join(str(t.number) for t in lab.requeued)}"
            )

    def live(self) -> Any:
        if not self.tty:
            return contextlib.nullcontext()
        return Live(get_renderable=self.render, console=out, refresh_per_second=4, transient=True)

    def finished(self, trial: Any) -> None:
        from overnight.records import BASELINE

        with self._lock:
            if trial.agent != BASELINE:
                self.done += 1
            self.last = trial
        if trial.status.value == "kept":
            self.best, self.base = self.lab.best(), self.lab.baseline()
        color = {"kept": "green", "discarded": "dim"}.get(trial.status.value, "red")
        metric = figure(trial.metric)
        why = f" — {trial.reason}" if trial.reason and trial.status.value != "discarded" else ""
        out.print(
            f"trial {trial.number:>4} {trial.agent:<12} [{color}]{trial.status.value:<11}[/] "
            f"{metric:>12}  {escape(trial.description)}{escape(why)}"
        )

    def render(self) -> Group:
        lab = self.lab
        elapsed = time.monotonic() - self.started
        best, base = self.best, self.base
        running = lab.store.trials(lab.run.id, statuses=IN_FLIGHT)
        parts = [f"elapsed {_clock(elapsed)}"]
        eta = self._eta(elapsed)
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        head = f"trials {self.done}" + (f"/{self.target}" if self.target else "")
        lines = [Text(f"{head} · running {len(running)} · " + " · ".join(parts))]
        if self.last is not None:
            last = self.last
            lines.append(
                Text(
                    f"last: trial {last.number} {last.status.value} {figure(last.metric)} ({last.agent})"
                )
            )
        if best is not None:
            change = ""
            if base is not None and base.metric and best.metric is not None:
                change = (
                    f" ({(best.metric - base.metric) / abs(base.metric) * 100:+.1f}% vs baseline)"
                )
            lines.append(
                Text(f"best {figure(best.metric)}{change} · trial {best.number} · {best.agent}")
            )
        for t in running:
            since = f" {_clock(time.time() - t.started_at)}" if t.started_at else ""
            lines.append(
                Text(f"  trial {t.number} {t.agent} {t.status.value}{since}", style="cyan")
            )
        return Group(*lines)

    def _eta(self, elapsed: float) -> float | None:
        options = []
        if self.seconds is not None:
            options.append(max(0.0, self.seconds - elapsed))
        if self.target and self.done:
            options.append(elapsed / self.done * max(0, self.target - self.done))
        return min(options) if options else None

    def summary(self, interrupted: bool, why: Any = None) -> None:
        from overnight.lab.ledger import best_holder

        lab = self.lab
        best, base = lab.best(), lab.baseline()
        out.print(
            f"[bold]{'stopped' if interrupted else 'done'}[/]: {self.done} trial(s) in {_clock(time.monotonic() - self.started)}"
        )
        if why is not None and not interrupted:
            out.print(f"stopped by {why.detail}", markup=False)
        if best is not None and base is not None and best.metric is not None and base.metric:
            pct = (best.metric - base.metric) / abs(base.metric) * 100
            out.print(
                f"best {lab.config.lab.metric} {figure(best.metric)} (trial {best.number}, {best.agent}) "
                f"vs baseline {figure(base.metric)}: {pct:+.2f}%"
            )
        agent = best_holder(lab.agents(), best)
        if agent:
            out.print(f"best branch: {agent.branch}")
        if interrupted:
            out.print("interrupted trials re-run when you start `overnight run` again.")
        out.print(f"next: `overnight report {lab.org.root}` for the plot and the kept changes")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
