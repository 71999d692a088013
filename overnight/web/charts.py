"""Inline SVG charts, drawn on the server: the metric over the trials, and the brownout timeline.

Owns the geometry and the markup; each chart is one string of SVG that the pages
embed and the event stream replaces, so the browser needs no charting library.
Ten thousand points stay small: discarded trials are one `<path>` of round dots,
only kept trials are elements of their own (with a tooltip). Knows nothing about
the store or HTTP.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from overnight.web.live import Brownout, TrialRow

_KEPT = "kept"
_MEASURED = {"kept", "discarded"}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    start: float
    length: float
    invert: bool = False

    def __call__(self, value: float) -> int:
        """Whole pixels: shorter markup, and ten thousand dots collapse where they overlap."""
        span = self.hi - self.lo or 1.0
        frac = (min(max(value, self.lo), self.hi) - self.lo) / span
        if self.invert:
            frac = 1.0 - frac
        return round(self.start + frac * self.length)


def _range(values: list[float], keep: list[float]) -> tuple[float, float]:
    """The y range: the 2nd to 98th percentile of every value, widened to every kept one,
    so one wild outlier does not flatten the rest."""
    ordered = sorted(values)
    n = len(ordered)
    lo, hi = ordered[int(n * 0.02)], ordered[min(n - 1, math.ceil(n * 0.98) - 1)]
    if keep:
        lo, hi = min(lo, *keep), max(hi, *keep)
    if lo == hi:
        lo, hi = lo - (abs(lo) * 0.05 or 1.0), hi + (abs(hi) * 0.05 or 1.0)
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def metric_plot(
    trials: Sequence[TrialRow], metric: str, goal: str, width: int = 960, height: int = 300
) -> str:
    """Every measured trial by number (kept vs discarded), crashes as ticks, the best-so-far line."""
    left, right, top, bottom = 64, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    measured = [t for t in trials if t.status in _MEASURED and t.metric is not None]
    failed = [t for t in trials if t.final and t.status not in _MEASURED]
    head = (
        f'<svg class="plot" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(metric)} over trials" xmlns="http://www.w3.org/2000/svg">'
    )
    if not measured:
        return (
            head + f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" class="muted">'
            "no measured trial yet</text></svg>"
        )
    numbers = [t.number for t in trials] or [0]
    xs = _Scale(min(numbers), max(max(numbers), min(numbers) + 1), left, plot_w)
    kept_values = [t.metric for t in measured if t.status == _KEPT and t.metric is not None]
    lo, hi = _range([t.metric for t in measured if t.metric is not None], kept_values)
    ys = _Scale(lo, hi, top, plot_h, invert=True)
    parts = [head]
    # axes and grid
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        y = ys(value)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4}" text-anchor="end">{_fmt(value)}</text>'
        )
    first, last = xs.lo, xs.hi
    for i in range(5):
        number = round(first + (last - first) * i / 4)
        x = xs(number)
        parts.append(
            f'<text class="tick" x="{x}" y="{top + plot_h + 16}" text-anchor="middle">{number}</text>'
        )
    parts.append(
        f'<text class="axis" x="{left + plot_w // 2}" y="{height - 4}" text-anchor="middle">trial</text>'
        f'<text class="axis" x="12" y="{top + plot_h // 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h // 2})">{html.escape(metric)} ({goal})</text>'
    )
    # discarded trials: one path of dots
    points = {
        (xs(t.number), ys(t.metric)) for t in measured if t.status != _KEPT and t.metric is not None
    }
    dots = "".join(f"M{x} {y}h0" for x, y in sorted(points))
    if dots:
        parts.append(f'<path class="discarded" d="{dots}"/>')
    ticks = "".join(f"M{x} {top + plot_h}v-6" for x in sorted({xs(t.number) for t in failed}))
    if ticks:
        parts.append(f'<path class="failed" d="{ticks}"/>')
    # kept trials: one path of bigger dots; each new best of the lab gets a circle of its
    # own, with a tooltip (a few dozen elements, however long the run)
    kept = {
        (xs(t.number), ys(t.metric)) for t in measured if t.status == _KEPT and t.metric is not None
    }
    if kept:
        parts.append(f'<path class="kept" d="{"".join(f"M{x} {y}h0" for x, y in sorted(kept))}"/>')
    best: float | None = None
    steps: list[str] = []
    records: list[str] = []
    for t in measured:
        if t.status != _KEPT or t.metric is None:
            continue
        if best is None or (t.metric < best if goal == "minimize" else t.metric > best):
            x, y = xs(t.number), ys(t.metric)
            steps.append(f"M{x} {y}" if best is None else f"H{x}V{y}")
            best = t.metric
            title = html.escape(
                f"trial {t.number} · {t.agent} · {_fmt(t.metric)} · {t.description}"
            )
            records.append(
                f'<circle class="record" cx="{x}" cy="{y}" r="4" data-trial="{t.number}">'
                f"<title>{title}</title></circle>"
            )
    if steps:
        steps.append(f"H{xs(last)}")
        parts.append(f'<path class="best" d="{"".join(steps)}"/>')
    parts.extend(records)
    parts.append("</svg>")
    return "".join(parts)


def brownout_timeline(
    brownouts: Sequence[Brownout], since: float, now: float | None = None, width: int = 960
) -> str:
    """One row per agent (or route) that rode out a brownout, a bar per brownout."""
    now = now or time.time()
    rows: list[str] = []
    for b in brownouts:
        label = f"{b.agent or 'gateway'} · {b.route}"
        if label not in rows:
            rows.append(label)
    left, row_h, top = 200, 22, 8
    height = top + row_h * max(1, len(rows)) + 24
    head = (
        f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="brownout timeline" xmlns="http://www.w3.org/2000/svg">'
    )
    if not rows:
        return (
            head + f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" class="muted">'
            "no brownout this run</text></svg>"
        )
    start = min(since, *(b.started for b in brownouts))
    xs = _Scale(start, max(now, start + 1), left, width - left - 12)
    parts = [head]
    for i, label in enumerate(rows):
        y = top + i * row_h
        parts.append(
            f'<text class="tick" x="{left - 8}" y="{y + 15}" text-anchor="end">'
            f"{html.escape(label)}</text>"
            f'<line class="grid" x1="{left}" x2="{width - 12}" y1="{y + 11}" y2="{y + 11}"/>'
        )
    for b in brownouts:
        y = top + rows.index(f"{b.agent or 'gateway'} · {b.route}") * row_h
        end = b.ended if b.ended is not None else now
        x0, x1 = xs(b.started), xs(end)
        lasted = end - b.started
        title = html.escape(
            f"{b.route} down {_clock(b.started)}–{_clock(b.ended) if b.ended else 'now'} "
            f"({lasted:.0f}s, {b.mode})"
        )
        cls = "outage open" if b.ended is None else "outage"
        parts.append(
            f'<rect class="{cls}" x="{x0}" y="{y + 4}" width="{max(2.0, x1 - x0):.1f}" '
            f'height="14" rx="2"><title>{title}</title></rect>'
        )
    base = top + len(rows) * row_h + 16
    parts.append(
        f'<text class="tick" x="{left}" y="{base}">{_clock(start)}</text>'
        f'<text class="tick" x="{width - 12}" y="{base}" text-anchor="end">{_clock(now)}</text>'
        "</svg>"
    )
    return "".join(parts)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


PALETTE = ("#4285f4", "#e8710a", "#a142f4", "#1e8e3e", "#f439a0", "#24c1e0", "#9aa0a6")


def spend_chart(
    series: dict[str, list[tuple[float, float]]],
    since: float,
    *,
    until: float | None,
    at_end: float | None,
    anomalies: Sequence[tuple[float, str, str]] = (),
    forecasts: Sequence[tuple[float, float]] = (),
    now: float | None = None,
    width: int = 960,
    height: int = 260,
) -> str:
    """Each agent's cumulative spend (a line from the run's start), the whole run's total
    with its forecast to the deadline (dashed), what was forecast for the deadline at each
    point the lab recorded one (`forecasts`: (when, USD), dotted), and each anomaly a red
    mark on its agent's line (with its title as a tooltip)."""
    now = now or time.time()
    head = (
        f'<svg class="spend" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="spend over time" xmlns="http://www.w3.org/2000/svg">'
    )
    if not series:
        return (
            head + f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" class="muted">'
            "no LLM call yet</text></svg>"
        )
    total: dict[float, float] = {}
    for points in series.values():
        last = 0.0
        for at, usd in points:
            total[at] = total.get(at, 0.0) + usd - last
            last = usd
    running, total_line = 0.0, [(since, 0.0)]
    for at in sorted(total):
        running += total[at]
        total_line.append((at, running))
    end = max(now, until or now, since + 60)
    top_usd = max(running, at_end or 0.0, *(usd for _, usd in forecasts)) * 1.05 or 1.0
    left, right, top, bottom = 60, 130, 10, 24
    xs = _Scale(since, end, left, width - left - right)
    ys = _Scale(0.0, top_usd, top, height - top - bottom, invert=True)
    parts = [head]
    for frac in (0.0, 0.5, 1.0):
        y = ys(top_usd * frac)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y}" y2="{y}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4}" text-anchor="end">'
            f"${top_usd * frac:.2f}</text>"
        )

    def line(points: list[tuple[float, float]], color: str, cls: str, label: str) -> None:
        path = " ".join(f"{xs(at)},{ys(usd)}" for at, usd in points)
        parts.append(
            f'<polyline class="{cls}" data-agent="{html.escape(label)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{path}"/>'
        )
        at, usd = points[-1]
        parts.append(
            f'<text class="tick" x="{xs(at) + 6}" y="{ys(usd) + 4}" fill="{color}">'
            f"{html.escape(label)} ${usd:.2f}</text>"
        )

    lines = {}
    for i, (agent, points) in enumerate(sorted(series.items())):
        full = [(since, 0.0), *points]
        lines[agent] = full
        line(full, PALETTE[i % len(PALETTE)], "agent-spend", agent)
    line(total_line, "#202124", "total-spend", "total")
    if until is not None and at_end is not None:
        x0, y0 = xs(min(now, until)), ys(running)
        title = html.escape(f"forecast: ${at_end:.2f} by {_clock(until)} at the current rate")
        parts.append(
            f'<line class="forecast" x1="{x0}" y1="{y0}" x2="{xs(until)}" y2="{ys(at_end)}" '
            f'stroke="#202124" stroke-width="2" stroke-dasharray="6 4"><title>{title}</title>'
            "</line>"
            f'<text class="tick" x="{xs(until) + 6}" y="{ys(at_end) + 4}">forecast '
            f"${at_end:.2f}</text>"
        )
    if forecasts:
        path = " ".join(f"{xs(at)},{ys(usd)}" for at, usd in forecasts)
        parts.append(
            f'<polyline class="forecast-history" fill="none" stroke="#9aa0a6" stroke-width="2" '
            f'stroke-dasharray="2 3" points="{path}"><title>what was forecast for the deadline, '
            "as each recorded forecast had it</title></polyline>"
        )
    for at, agent, title in anomalies:
        points = lines.get(agent, total_line)
        usd = max((u for t, u in points if t <= at), default=points[-1][1])
        x, y = xs(at), ys(usd)
        parts.append(
            f'<path class="anomaly" d="M{x},{y - 9} l6,10 h-12 z" fill="#d93025">'
            f"<title>{html.escape(title)}</title></path>"
        )
    base = height - 6
    parts.append(
        f'<text class="tick" x="{left}" y="{base}">{_clock(since)}</text>'
        f'<text class="tick" x="{width - right}" y="{base}" text-anchor="end">{_clock(end)}'
        "</text></svg>"
    )
    return "".join(parts)
