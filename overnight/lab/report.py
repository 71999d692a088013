"""The morning report: one self-contained HTML page and the same in Markdown, with a plot.

Owns how a run is told to a person who slept through it, over coffee: the headline
(baseline to best, trials, wall time, dollars), the progress plot, the kept changes
with their deltas and the cumulative diff, each agent's work and time, the incidents
on a timeline, the costs and forecast, and advice for the next night. Reads the
ledger views, the events, the audit chain, the notifications and
`overnight.costs`; knows nothing about how trials ran.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from overnight.costs.overview import Overview, overview
from overnight.costs.summary import Spend, improvements, keeps_of
from overnight.lab.git import Git, GitError
from overnight.lab.ledger import LabView, best_so_far, status
from overnight.paths import StateDir
from overnight.records import BASELINE, Event, Trial, TrialStatus

MAX_DIFF = 200_000
"""Characters of the cumulative diff shown; the rest is cut (git has it whole)."""


def plot(view: LabView, out: Path, trials: list[Trial] | None = None) -> Path:
    """Every trial's metric (each agent's discarded ones in its colour, keeps green),
    failures marked, and the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = view.config.lab
    if trials is None:
        trials = view.store.trials(view.run.id)
    trials = [t for t in trials if t.status.final]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    kept = [
        (t.number, t.metric)
        for t in trials
        if t.status is TrialStatus.kept and t.metric is not None
    ]
    failed = [
        t.number
        for t in trials
        if t.metric is None or t.status not in (TrialStatus.kept, TrialStatus.discarded)
    ]
    # each agent's discarded trials in its own colour; every keep green, on top
    palette = ["#4285f4", "#fbbc04", "#a142f4", "#24c1e0", "#f439a0", "#9aa0a6", "#e8710a"]
    agents = sorted({t.agent for t in trials})

    def label(i: int, agent: str) -> str | None:
        if len(agents) <= 8:
            return f"{agent} (discarded)"
        return "discarded (a colour per agent)" if i == 0 else None

    for i, agent in enumerate(agents):
        points = [(t.number, t.metric) for t in trials
                  if t.agent == agent and t.status is TrialStatus.discarded
                  and t.metric is not None]  # fmt: skip
        if points:
            ax.scatter([x for x, _ in points], [y for _, y in points], s=18,
                       color=palette[i % len(palette)], label=label(i, agent), zorder=2,
                       alpha=0.8)  # fmt: skip
    if kept:
        ax.scatter([x for x, _ in kept], [y for _, y in kept], s=34, color="#1e8e3e",
                   label="kept", zorder=3)  # fmt: skip
    line = best_so_far(trials, cfg.goal)
    if line:
        steps_x = [x for x, _ in line] + [max(t.number for t in trials)]
        steps_y = [y for _, y in line] + [line[-1][1]]
        ax.step(
            steps_x,
            steps_y,
            where="post",
            color="#1e8e3e",
            linewidth=1.5,
            label="best so far",
            zorder=1,
        )
    if failed:
        y = ax.get_ylim()[1] if any(t.metric is not None for t in trials) else 0.0
        ax.scatter(
            failed,
            [y] * len(failed),
            marker="x",
            color="#d93025",
            label="crashed / rejected / timed out",
            zorder=3,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(
        f"{cfg.metric} ({'lower' if cfg.goal.value == 'minimize' else 'higher'} is better)"
    )
    ax.set_title(f"{cfg.name} — run {view.run.id}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


Block = tuple[Any, ...]
"""("h1"|"h2"|"p", text), ("ul", items), ("table", header, rows), ("img",), ("diff", title,
text): one piece of the report, written as Markdown and as HTML."""

INCIDENTS = {
    "gateway.brownout": "brownout", "gateway.recovery": "recovery", "gateway.budget": "budget",
    "trial.crashed": "crash", "trial.timed_out": "timeout", "cost.anomaly": "anomaly",
    "agent.paused": "paused", "agent.pause_requested": "pause asked",
    "agent.turn_stopped": "turn stopped", "agent.resume_requested": "resume asked", "holdout.diverged": "holdout diverged",
}  # fmt: skip
STATES = ("working", "idle", "waiting", "paused")


def write(view: LabView, out: Path | None = None) -> Path:
    """Write the report as Markdown and as one self-contained HTML file, side by side, with
    its plot; return `out` (default: the run's `report.md`)."""
    default_dir = StateDir.of(view.root).reports(view.run.id)
    out = out or default_dir / "report.md"
    trials = view.store.trials(view.run.id)
    png = plot(view, out.with_name(out.stem + "-progress.png"), trials)
    blocks = _blocks(view, trials)
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(blocks, png)
    page = _html(blocks, png)
    html_path, md_path = out.with_suffix(".html"), out.with_suffix(".md")
    if out.suffix.lower() in (".html", ".htm"):
        html_path = out
    elif out.suffix.lower() != ".md":
        md_path = out
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return out


def _blocks(view: LabView, all_trials: list[Trial]) -> list[Block]:
    s = status(view)
    cfg = view.config.lab
    store, run = view.store, view.run
    trials = [t for t in all_trials if t.status.final]
    kept = [t for t in trials if t.status is TrialStatus.kept and t.agent != BASELINE]
    best = s["best"]
    events = store.events(run.id, kinds=[*INCIDENTS, "agent.state", "run.started",
                                         "run.resumed", "run.stopped", "approval.requested",
                                         "approval.approved", "approval.denied",
                                         "approval.expired"], limit=1_000_000)  # fmt: skip
    costs = overview(store, view.config, run, trials=all_trials)
    started = min((e.at for e in events if e.kind in ("run.started", "run.resumed")),
                  default=run.created_at)  # fmt: skip
    ended = max((e.at for e in events if e.kind == "run.stopped"), default=time.time())
    headline = f"- {cfg.metric} ({cfg.goal.value}): baseline {_fmt(s['baseline'])} → best "
    headline += _fmt(best["metric"]) if best else "none yet"
    if s["improvement_pct"] is not None:
        headline += f" ({s['improvement_pct']:+.2f}%)"
    blocks: list[Block] = [
        ("h1", f"{cfg.name}: run {run.id}"),
        ("ul", [
            headline[2:],
            *( [f"hidden holdout {s['holdout']['metric']}: baseline "
                f"{_fmt(s['holdout']['baseline'])} → best "
                f"{_fmt(best['holdout_metric'] if best else None)}"] if s["holdout"] else []),
            f"trials: {s['trials']['total']} ("
            + ", ".join(f"{k} {v}" for k, v in s["trials"]["by_status"].items()) + ")",
            f"wall time: {_hours(ended - started)}",
            f"spent: ${costs.costs.total.usd:.2f} on {costs.costs.total.requests} model requests",
            _keep_bar(s),
            *([f"best trial {best['trial']} by {best['agent']}, commit "
               f"{(best['commit'] or '')[:7]}"
               + (f"; branch {best['branch']} (git checkout {best['branch']})"
                  if best["branch"] else "")] if best else []),
        ]),
    ]  # fmt: skip
    history = s["imported"]
    if history:
        blocks.append(("p", f"Imported: {history['trials']} trials from {history['file']}; the "
                            "run's baseline is its starting commit measured again here."))  # fmt: skip
    blocks += [("h2", "Progress"), ("img",), ("h2", "Kept changes")]
    if kept:
        names = ["memory_gb", *cfg.record]
        held = [f"holdout {s['holdout']['metric']}"] if s["holdout"] else []
        gains = improvements(keeps_of(trials), cfg.goal)
        rows = [
            [str(t.number), t.agent, _fmt(t.metric), _fmt(gains.get(t.number)),
             *(_fmt(v) for v in (*((t.holdout_metric,) if held else ()), t.memory_gb,
                                 *(t.recorded.get(n) for n in cfg.record))),
             t.description + (" ⚑ flagged" if t.flag else "")]
            for t in kept
        ]  # fmt: skip
        blocks.append(
            ("table", ["trial", "agent", cfg.metric, "delta", *held, *names, "change"], rows)
        )
        if best and best.get("commit"):
            blocks.append(("diff", "the cumulative diff: baseline → best",
                           _diff(view.root, run.base_commit, best["commit"])))  # fmt: skip
    else:
        blocks.append(("p", "No change beat the baseline yet."))
    if s["flagged"]:
        blocks += [("h2", "Flagged: suspected overfitting or gaming"),
                   ("table", ["trial", "agent", "status", "why"],
                    [[str(f["trial"]), f["agent"], f["status"], f["flag"]] for f in s["flagged"]])]  # fmt: skip
    blocks += [("h2", "Agents"), _agents_table(costs, trials, events, ended)]
    blocks += [("h2", "Incidents"), *_incidents(view, events, costs)]
    blocks += [("h2", "Costs"), *_costs(costs, events)]
    blocks += [("h2", "For the next night")]
    blocks.append(("ul", costs.advice) if costs.advice else ("p", "Nothing to change."))
    bounded = [t for t in trials if t.reason and t.reason.startswith("constraint ")]
    if bounded:
        blocks += [("h2", "Trials that broke a constraint"),
                   ("table", ["trial", "agent", "reason"],
                    [[str(t.number), t.agent, t.reason or ""] for t in bounded])]  # fmt: skip
    failures = [t for t in trials if t.status not in (TrialStatus.kept, TrialStatus.discarded)]
    if failures:
        blocks += [("h2", "Failed trials"),
                   ("table", ["trial", "status", "reason"],
                    [[str(t.number), t.status.value, t.reason or ""] for t in failures[-20:]])]  # fmt: skip
    return blocks


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _diff(root: Path, old: str, new: str) -> str:
    try:
        text = Git(root).run("diff", old, new, "--")
    except (GitError, OSError) as exc:
        return f"(no diff: {exc})"
    return text if len(text) <= MAX_DIFF else text[:MAX_DIFF] + "\n... (cut)\n"


def _agents_table(costs: Overview, trials: list[Trial], events: list[Event], ended: float) -> Block:
    spans: dict[str, dict[str, float]] = {}
    last: dict[str, tuple[str, float]] = {}
    for e in events:
        if e.kind != "agent.state" or e.agent is None:
            continue
        state = str(e.payload.get("state", ""))
        if e.agent in last:
            was, since = last[e.agent]
            own = spans.setdefault(e.agent, {})
            own[was] = own.get(was, 0.0) + e.at - since
        last[e.agent] = (state, e.at)
    for agent, (was, since) in last.items():
        own = spans.setdefault(agent, {})
        own[was] = own.get(was, 0.0) + max(0.0, ended - since)
    rows = []
    for a in costs.costs.agents:
        mine = [t for t in trials if t.agent == a.name]
        crash = sum(t.status is TrialStatus.crashed for t in mine) / len(mine) if mine else 0.0
        times = spans.get(a.name, {})
        rows.append([
            a.name, a.runtime, str(a.trials), str(a.keeps), f"{crash:.0%}",
            *(_hours(times.get(state, 0.0)) for state in STATES),
            f"${a.spend.usd:.2f}", "—" if a.per_keep is None else f"${a.per_keep:.2f}",
        ])  # fmt: skip
    return ("table", ["agent", "runtime", "trials", "keeps", "crash rate", *STATES, "$",
                      "$ per keep"], rows)  # fmt: skip


def _incidents(view: LabView, events: list[Event], costs: Overview) -> list[Block]:
    rows: list[tuple[float, str, str, str]] = []
    for e in events:
        kind = INCIDENTS.get(e.kind)
        if kind is None and e.kind.startswith("approval."):
            kind = e.kind.replace(".", " ")
        if kind is None:
            continue
        p = e.payload
        what = str(p.get("title") or p.get("detail") or p.get("reason") or p.get("route")
                   or p.get("by") or "")  # fmt: skip
        if e.kind.startswith("approval.") and p.get("answered_by"):
            what = f"answered by {p['answered_by']}" + (f": {what}" if what else "")
        rows.append((e.at, kind, e.agent or "", what[:200]))
    for r in view.store.audit_records(view.run.lab, limit=100_000):
        if r.kind == "decision" and r.at >= view.run.created_at:
            data = r.data()
            if isinstance(data, dict) and data.get("decision") == "deny":
                rows.append((r.at, "policy denial", r.actor, r.subject[:200]))
    for n in view.store.notifications(view.run.lab, limit=10_000):
        if n.created_at >= view.run.created_at:
            rows.append((n.created_at, f"notified {n.notice.sink} ({n.status})", "",
                         n.notice.title[:200]))  # fmt: skip
    failovers: dict[str, int] = {}
    for g in costs.costs.groups:
        if g.attempts > g.requests:
            failovers[g.upstream] = failovers.get(g.upstream, 0) + g.attempts - g.requests
    out: list[Block] = []
    if failovers:
        out.append(("p", "Failovers by upstream (attempts beyond a request's first): "
                         + ", ".join(f"{u} {n}" for u, n in sorted(failovers.items()))))  # fmt: skip
    if not rows:
        return [*out, ("p", "None.")]
    rows.sort()
    table = [[time.strftime("%H:%M:%S", time.gmtime(at)), kind, agent, what]
             for at, kind, agent, what in rows[-500:]]  # fmt: skip
    return [*out, ("table", ["UTC", "what", "agent", "detail"], table)]


def _costs(costs: Overview, events: list[Event]) -> list[Block]:
    c, fc = costs.costs, costs.forecast
    # the last start's forecasts, against how it ended (None while it runs)
    since = max((e.at for e in events if e.kind in ("run.started", "run.resumed")), default=0.0)
    ended = max((e.at for e in events if e.kind == "run.stopped" and e.at >= since), default=None)
    line = f"Spent ${c.total.usd:.2f}; the prompt cache saved ${c.total.cache_saved_usd:.2f}"
    if ended is None:  # still running: where it is heading now
        line += f"; burn rate ${fc.burn_per_h:.2f}/h"
        if fc.at_end is not None:
            line += f", ${fc.at_end:.2f} by the deadline at this rate"
    blocks: list[Block] = [("p", line + "."), *_against_actual(costs, since, ended)]

    def table(title: str, slices: dict[str, Spend]) -> Block:
        return ("table", [title, "$", "requests", "tokens", "tokens per $", "cache share",
                          "cache saved"],
                [[name, f"${s.usd:.4f}", str(s.requests), str(s.tokens),
                  "—" if s.tokens_per_usd is None else f"{s.tokens_per_usd:,.0f}",
                  "—" if s.cache_share is None else f"{s.cache_share:.0%}",
                  f"${s.cache_saved_usd:.4f}"] for name, s in slices.items()])  # fmt: skip

    blocks.append(table("agent", {a.name: a.spend for a in c.agents}))
    blocks.append(table("route", dict(sorted(c.routes.items()))))
    if fc.budgets:
        blocks.append(("table", ["budget", "limit", "spent", "runs out (UTC)"],
                       [[f"{b.who} {b.period}", f"${b.limit:.2f}", f"${b.spent:.2f}",
                         "—" if b.runs_out_at is None
                         else time.strftime("%Y-%m-%d %H:%M", time.gmtime(b.runs_out_at))]
                        for b in fc.budgets]))  # fmt: skip
    return blocks


FORECAST_ROWS = 24
"""Forecasts shown against the actual spend, at most (spread over the night)."""


def _against_actual(costs: Overview, since: float, ended: float | None) -> list[Block]:
    """The forecasts the lab recorded since its last start, each taken to the run's end (or
    now, while it runs) at its rate of then, against the spend there."""
    recorded = [r for r in costs.forecasts if r.at >= since]
    if not recorded:
        return []
    end = costs.costs.at if ended is None else ended
    actual = costs.costs.total.usd
    if len(recorded) > FORECAST_ROWS:
        step = (len(recorded) - 1) / (FORECAST_ROWS - 1)
        recorded = [recorded[round(i * step)] for i in range(FORECAST_ROWS)]
    clock = time.strftime("%H:%M:%S", time.gmtime(end))
    rows = []
    for r in recorded:
        then = r.by(end)
        off = f"{(then - actual) / actual:+.0%}" if actual > 0 else "—"
        rows.append([time.strftime("%H:%M:%S", time.gmtime(r.at)), f"${r.spent:.4f}",
                     f"${r.burn_per_h:.4f}", f"${then:.4f}", off])  # fmt: skip
    said = "the run's end" if ended is not None else "now (it is still running)"
    return [
        ("p", f"Forecast against actual: each forecast the lab recorded while it ran, its "
              f"burn rate taken to {said}, {clock} UTC, against the ${actual:.4f} spent by "
              "then."),
        ("table", ["UTC", "spent then", "burn rate ($/h)", f"forecast for {clock}", "off by"],
         rows),
    ]  # fmt: skip


def _markdown(blocks: list[Block], png: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "ul":
            lines += [*(f"- {item}" for item in b[1]), ""]
        elif kind == "img":
            lines += [f"![progress]({png.name})", ""]
        elif kind == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|---" * len(b[1]) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                      for row in b[2]]  # fmt: skip
            lines.append("")
        elif kind == "diff":
            fence = "````" if "```" in b[2] else "```"
            lines += [f"{b[1]}:", "", f"{fence}diff", b[2].rstrip("\n"), fence, ""]
    return "\n".join(lines)


CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;"
    "color:#202124}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;"
    "text-align:left;vertical-align:top}th{background:#f5f5f5}pre{background:#f8f8f8;"
    "padding:.8em;overflow:auto;font-size:13px}img{max-width:100%}"
)


def _html(blocks: list[Block], png: Path) -> str:
    """One self-contained page: no link leaves it (the plot is inlined)."""
    image = base64.b64encode(png.read_bytes()).decode()
    e = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "overnight report")
    parts = [f"<!doctype html><meta charset=utf-8><title>{e(title)}</title><style>{CSS}</style>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            section = f' id="{e(b[1].lower().replace(" ", "-"))}"' if kind == "h2" else ""
            parts.append(f"<{kind}{section}>{e(b[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "img":
            parts.append(f"<img alt=progress src='data:image/png;base64,{image}'>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                           for row in b[2])  # fmt: skip
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "diff":
            parts.append(f"<details open><summary>{e(b[1])}</summary><pre>{e(b[2])}</pre>"
                         "</details>")  # fmt: skip
    return "\n".join(parts) + "\n"


def _keep_bar(s: dict[str, Any]) -> str:
    floor = s["noise_floor"]
    if floor:
        return (
            f"noise floor: ±{floor['min_delta']:.3g} (2σ; σ = {floor['sigma']:.3g} from "
            f"{len(floor['runs'])} baseline runs)"
        )
    if s["min_delta"] is None:
        return "noise floor: not measured yet"
    return f"min_delta: {s['min_delta']:g}"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"
