"""`overnight status`, `ledger`, `import` and `report`: the lab's record of its trials.

Owns how the terminal shows where the latest run stands, its ledger (or
autoresearch's results.tsv), a hand-run history brought in, and where the morning
report went. The figures come from `lab.ledger`, `lab.history` and `lab.report`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from overnight.cli.common import Dir, out, print_json, run_view, warn
from overnight.lab.privacy import keep_private

commands = typer.Typer()


@commands.command()
def status(
    directory: Dir = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Where the latest run stands: trials, best metric, agents, what is running."""
    from overnight.lab.ledger import status as lab_status
    from overnight.units import figure, span

    view = run_view(directory)
    try:
        data = lab_status(view)
    finally:
        view.close()
    if as_json:
        print_json(data)
        return
    best = data["best"]
    running = f"running (pid {data['running_pid']})" if data["running_pid"] else "not running"
    out.print(f"[bold]{data['lab']}[/] run {data['run']} · {running}")
    ended = data["stopped"]
    if ended is not None:
        if ended["rule"] is None:  # killed, or an older version's stop
            out.print(f"stopped: {ended['detail'] or 'the rule was not recorded'}", markup=False)
        else:
            how = "stopping, by" if ended["stopping"] else "stopped by"
            out.print(f"{how} {ended['detail']}", markup=False)
    counts = ", ".join(f"{k} {v}" for k, v in data["trials"]["by_status"].items())
    out.print(f"trials: {data['trials']['total']} ({counts})")
    history = data["imported"]
    if history:
        top = history["best"]
        out.print(
            f"imported: {history['trials']} trial(s) from {history['file']}, baseline "
            f"{figure(history['baseline'])}"
            + (f", best {figure(top['metric'])} (trial {top['trial']})" if top else ""),
            markup=False,
        )
    out.print(f"baseline {data['metric']}: {figure(data['baseline'])}")
    out.print(_keep_bar(data))
    holdout = data["holdout"]
    if best:
        change = (
            f" ({data['improvement_pct']:+.2f}%)" if data["improvement_pct"] is not None else ""
        )
        beside = f" · holdout {figure(best['holdout_metric'])}" if holdout else ""
        out.print(
            f"best {data['metric']}: [green]{figure(best['metric'])}[/]{change}{beside}"
            f" · trial {best['trial']} · {best['agent']} · {(best['commit'] or '')[:7]}"
            + (f" · branch {best['branch']}" if best["branch"] else "")
        )
    if holdout:
        out.print(
            f"hidden holdout {holdout['metric']}: baseline {figure(holdout['baseline'])}"
            f" · on divergence: {holdout['on_divergence']}",
            markup=False,
        )
    for item in data["flagged"]:
        out.print(
            f"[yellow]flagged[/] trial {item['trial']} ({item['agent']}, {item['status']}): "
            f"{escape(item['flag'])}"
        )
    spend = data["spend_usd"]
    if spend["total"]:
        parts = ", ".join(f"{a} ${v:.4f}" for a, v in spend["by_agent"].items() if v)
        out.print(f"LLM spend through the gateway: ${spend['total']:.4f} ({parts})")
    fc = data["forecast"]
    if fc is not None and fc["burn_usd_per_h"]:
        line = f"burn ${fc['burn_usd_per_h']:.4f}/h"
        if fc["at_end_usd"] is not None:
            line += f" · by the run's end: ${fc['at_end_usd']:.4f}"
        for b in fc["budgets"]:
            if b["runs_out_at"] is not None:
                clock = time.strftime("%H:%M UTC", time.gmtime(b["runs_out_at"]))
                line += f" · {b['who']} {b['period']} budget runs out {clock}"
        out.print(line + " (overnight costs)", markup=False)
    now = time.time()
    for agent in data["agents"]:
        since = agent["state_since"]
        state = agent["state"] + (f" {span(now - since)}" if since else "")
        out.print(
            f"  {agent['name']:<14} {agent['runtime']:<11} {state:<15} trials {agent['trials']:<4}"
            f" kept {agent['kept']:<3} best {figure(agent['best_metric'])}"
        )
        if agent["state"] in ("paused", "waiting") and agent["reason"]:
            out.print(f"  {'':<14} {escape(agent['reason'])}")
    for item in data["running"]:
        out.print(f"  now: trial {item['trial']} ({item['agent']}) {item['status']}")
    for item in data["interrupted"]:
        out.print(
            f"  stopped: trial {item['trial']} ({item['agent']}) was {item['status']} when "
            f"overnight stopped; {item['why']}",
            markup=False,
        )


@commands.command()
def ledger(
    directory: Dir = Path("."),
    tsv: Annotated[
        bool, typer.Option("--tsv", help="autoresearch-compatible results.tsv.")
    ] = False,
) -> None:
    """Every finished trial of the latest run."""
    from overnight.lab import ledger as ledger_mod

    view = run_view(directory)
    try:
        if tsv:
            sys.stdout.write(ledger_mod.tsv(view))
            return
        rows = ledger_mod.rows(view)
        metric, record = view.config.lab.metric, list(view.config.lab.record)
        held = ledger_mod.holdout_column(view.config) if view.config.lab.holdout else None
    finally:
        view.close()
    extra = "".join(f" {name[:12]:>12}" for name in record)
    if held is not None:  # with a hidden holdout, its metric beside the metric
        extra = f" {'holdout':>12}" + extra
    out.print(
        f"{'trial':>5}  {'agent':<12} {'status':<11} {metric[:12]:>12} {'memory_gb':>9}"
        f"{escape(extra)}  description"
    )
    for r in rows:
        color = {"kept": "green", "discarded": "dim"}.get(r["outcome"], "red")
        values = "".join(f" {r[name]:>12}" for name in record)
        if held is not None:
            values = f" {r[held]:>12}" + values
        # a plain discard's reason ("does not beat the best") says nothing the metric does not
        telling = r["outcome"] != "discarded" or r["reason"].startswith(("constraint ", "policy:"))
        why = f" — {r['reason']}" if r["reason"] and telling else ""
        flag = f" [yellow]flagged: {escape(r['flag'])}[/]" if held is not None and r["flag"] else ""
        out.print(
            f"{r['trial']:>5}  {r['agent']:<12} [{color}]{r['outcome']:<11}[/] {r[metric]:>12}"
            f" {r['memory_gb']:>9}{values}  {escape(r['description'])}[dim]{escape(why)}[/]{flag}"
        )


@commands.command("import")
def import_(
    results: Annotated[
        Path, typer.Argument(help="autoresearch's results.tsv (commit, metric, memory_gb, ...).")
    ],
    directory: Dir = Path("."),
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="REF", help="Start from this commit or branch, not the last kept."
        ),
    ] = None,
) -> None:
    """Bring a hand-run autoresearch history into a new run's ledger; `overnight run` then
    goes on from its last kept commit."""
    from overnight.lab.history import import_history
    from overnight.units import figure
    from overnight.wiring import Checks

    keep_private()
    done = import_history(directory, results, from_, checks=Checks())
    for warning in done.warnings:
        warn(warning)
    rows = done.rows
    counts = {word: sum(1 for r in rows if r.status.value == status) for word, status in
              (("keep", "kept"), ("discard", "discarded"), ("crash", "crashed"))}  # fmt: skip
    out.print(
        f"imported {len(rows)} trial(s) from {results} into run {done.run_id}: "
        + ", ".join(f"{word} {n}" for word, n in counts.items()),
        markup=False,
    )
    first = rows[0]
    if first.metric is not None:
        out.print(f"baseline (line {first.line}): {figure(first.metric)}", markup=False)
    where = (
        f"the last kept commit (line {done.start_row.line}: {done.start_row.description})"
        if done.start_row
        else f"--from {from_}"
    )
    out.print(f"the run starts from {done.start[:10]}, {where}", markup=False)
    out.print(
        "next: `overnight run` measures that commit again (its own baseline), then the "
        "agents go on from it; they see the imported trials in the ledger"
    )


@commands.command()
def report(
    directory: Dir = Path("."),
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (.md or .html).")
    ] = None,
) -> None:
    """Write the morning report: summary, kept changes and a progress plot."""
    from overnight.lab import report as report_mod

    if out_file is None:  # into the lab's state; a file the user names is theirs to share
        keep_private()
    view = run_view(directory)
    try:
        path = report_mod.write(view, out_file.resolve() if out_file else None)
    finally:
        view.close()
    out.print(f"report: {path}")


def _keep_bar(data: dict[str, Any]) -> str:
    """What a keep must beat the best by, and where that figure comes from."""
    floor, min_delta = data["noise_floor"], data["min_delta"]
    if floor:
        runs = ", ".join(f"{r:.6g}" for r in floor["runs"])
        return (
            f"noise floor: ±{floor['min_delta']:.3g} (2σ, σ = {floor['sigma']:.3g} from "
            f"{len(floor['runs'])} baseline runs: {runs})"
        )
    if min_delta is None:
        return "noise floor: to be measured with the baseline"
    return f"min_delta: {min_delta:g} (a keep must beat the best by more)"
