"""The morning report: a progress plot and a Markdown or HTML summary of a run.

Owns how a run is told to a person who slept through it. Reads the ledger
views; knows nothing about how trials ran.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from overnight.lab.ledger import LabView, best_so_far, status
from overnight.paths import StateDir
from overnight.records import BASELINE, TrialStatus


def plot(view: LabView, out: Path) -> Path:
    """Every trial's metric (kept vs discarded), failures marked, and the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = view.config.lab
    trials = [t for t in view.store.trials(view.run.id) if t.status.final]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    kept = [
        (t.number, t.metric)
        for t in trials
        if t.status is TrialStatus.kept and t.metric is not None
    ]
    discarded = [
        (t.number, t.metric)
        for t in trials
        if t.status is TrialStatus.discarded and t.metric is not None
    ]
    failed = [
        t.number
        for t in trials
        if t.metric is None or t.status not in (TrialStatus.kept, TrialStatus.discarded)
    ]
    for points, size, color, label, z in (
        (discarded, 18, "#9aa0a6", "discarded", 2),
        (kept, 34, "#1e8e3e", "kept", 3),
    ):
        if points:
            ax.scatter(
                [x for x, _ in points],
                [y for _, y in points],
                s=size,
                color=color,
                label=label,
                zorder=z,
            )
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
        y = ax.get_ylim()[1] if (kept or discarded) else 0.0
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


def write(view: LabView, out: Path | None = None) -> Path:
    """Write the report (Markdown, or HTML if `out` ends in .html) and its plot; return its path."""
    default_dir = StateDir.of(view.root).reports(view.run.id)
    out = out or default_dir / "report.md"
    png = plot(view, out.with_name(out.stem + "-progress.png"))
    s = status(view)
    cfg = view.config.lab
    trials = [t for t in view.store.trials(view.run.id) if t.status.final]
    kept = [t for t in trials if t.status is TrialStatus.kept and t.agent != BASELINE]
    best = s["best"]
    lines = [
        f"# {cfg.name}: run {view.run.id}",
        "",
        f"- metric: `{cfg.metric}` ({cfg.goal.value})",
        f"- trials: {s['trials']['total']} ({', '.join(f'{k} {v}' for k, v in s['trials']['by_status'].items())})",
        f"- baseline: {_fmt(s['baseline'])}",
        f"- best: {_fmt(best['metric']) if best else 'none'}"
        + (
            f" (trial {best['trial']}, {best['agent']}, `{(best['commit'] or '')[:7]}`)"
            if best
            else ""
        ),
        f"- {_keep_bar(s)}",
    ]
    holdout = s["holdout"]
    if holdout:
        lines.append(
            f"- hidden holdout `{holdout['metric']}`: baseline {_fmt(holdout['baseline'])}, "
            f"best {_fmt(best['holdout_metric'] if best else None)} "
            f"(on divergence: {holdout['on_divergence']})"
        )
    history = s["imported"]
    if history:
        best_then = history["best"]
        lines.append(
            f"- imported: {history['trials']} trials from `{history['file']}` (baseline "
            f"{_fmt(history['baseline'])}"
            + (
                f", best {_fmt(best_then['metric'])} in trial {best_then['trial']}"
                if best_then
                else ""
            )
            + "); the run's baseline is its starting commit measured again here"
        )
    if s["improvement_pct"] is not None:
        lines.append(f"- change vs baseline: {s['improvement_pct']:+.2f}%")
    if best and best["branch"]:
        lines.append(f"- best branch: `{best['branch']}` (`git checkout {best['branch']}`)")
    lines += ["", f"![progress]({png.name})", "", "## Kept changes", ""]
    if kept:
        names = ["memory_gb", *cfg.record]
        held = [f"holdout {holdout['metric']}"] if holdout else []
        lines += [
            f"| trial | agent | {cfg.metric} | {' | '.join([*held, *names])} | change |",
            "|---" * (4 + len(held) + len(names)) + "|",
        ]
        lines += [
            f"| {t.number} | {t.agent} | {_fmt(t.metric)} | "
            + " | ".join(
                _fmt(v)
                for v in (
                    *((t.holdout_metric,) if holdout else ()),
                    t.memory_gb,
                    *(t.recorded.get(n) for n in cfg.record),
                )
            )
            + f" | {t.description}{' ⚑ flagged' if t.flag else ''} |"
            for t in kept
        ]
    else:
        lines.append("No change beat the baseline yet.")
    if s["flagged"]:
        lines += ["", "## Flagged: suspected overfitting or gaming", ""]
        lines += ["| trial | agent | status | why |", "|---|---|---|---|"]
        lines += [
            f"| {f['trial']} | {f['agent']} | {f['status']} | {f['flag']} |" for f in s["flagged"]
        ]
    bounded = [t for t in trials if t.reason and t.reason.startswith("constraint ")]
    if bounded:
        lines += ["", "## Trials that broke a constraint", "", "| trial | agent | reason |"]
        lines += ["|---|---|---|"] + [f"| {t.number} | {t.agent} | {t.reason} |" for t in bounded]
    failures = [t for t in trials if t.status not in (TrialStatus.kept, TrialStatus.discarded)]
    if failures:
        lines += ["", "## Failed trials", "", "| trial | status | reason |", "|---|---|---|"]
        lines += [f"| {t.number} | {t.status.value} | {t.reason or ''} |" for t in failures[-20:]]
    markdown = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".html", ".htm"):
        out.write_text(_html(markdown, png), encoding="utf-8")
    else:
        out.write_text(markdown, encoding="utf-8")
    return out


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


def _html(markdown: str, png: Path) -> str:
    """A self-contained page: the Markdown shown as preformatted text, the plot inlined."""
    image = base64.b64encode(png.read_bytes()).decode()
    body = html.escape(markdown.replace(f"![progress]({png.name})", ""))
    return (
        "<!doctype html><meta charset=utf-8><title>overnight report</title>"
        "<style>body{font:14px system-ui;margin:2em auto;max-width:60em}pre{white-space:pre-wrap}</style>"
        f"<img alt=progress style='max-width:100%' src='data:image/png;base64,{image}'>"
        f"<pre>{body}</pre>"
    )
