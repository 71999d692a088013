"""The `overnight` command: a thin typer layer over the lab's service API.

Owns argument parsing, what the terminal shows, and exit codes (0 ok, 1 our
bug, 2 bad input, 3 the baseline could not be measured, 4 every agent was paused
for its crash streak, 130 interrupted).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from overnight import __version__
from overnight.errors import BaselineFailed, UserError
from overnight.lab.privacy import keep_private
from overnight.notify_cli import app as notify_app
from overnight.records import IN_FLIGHT
from overnight.units import parse_duration

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run a team of agents on a repository with a metric; keep what improves, all night.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"overnight {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _everywhere(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # no docstring: the app's help stays the one given to typer.Typer
    pass


Dir = Annotated[Path, typer.Argument(help="The lab: a git repository with overnight.toml.")]
UiHost = Annotated[
    str, typer.Option("--host", help="Where the command center listens (default loopback only).")
]
UiPort = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="The command center's port (0: any).")
]
NoUi = Annotated[bool, typer.Option("--no-ui", help="Do not serve the command center.")]


@app.command()
def run(
    directory: Dir = Path("."),
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Stop after N more trials.")
    ] = None,
    for_: Annotated[
        str | None, typer.Option("--for", help='Stop starting trials after this long, e.g. "8h".')
    ] = None,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new run from HEAD instead of resuming.")
    ] = False,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="REF",
            help="With --new: start from this commit or branch (e.g. autoresearch/mar5) "
            "instead of HEAD; overnight.toml stays the checkout's.",
        ),
    ] = None,
    host: UiHost = "127.0.0.1",
    port: UiPort = 0,
    no_ui: NoUi = False,
) -> None:
    """Run the lab in the foreground; run it again to resume where it stopped."""
    _run_lab(directory, trials, for_, new, live=True, ui=(host, port, not no_ui), base_ref=from_)


@app.command()
def up(
    directory: Dir = Path("."),
    for_: Annotated[
        str | None, typer.Option("--for", help='Stop starting trials after this long, e.g. "8h".')
    ] = None,
    host: UiHost = "127.0.0.1",
    port: UiPort = 0,
    no_ui: NoUi = False,
) -> None:
    """Run the lab as a long-lived service: one log line per trial, until SIGTERM or Ctrl-C."""
    _run_lab(directory, None, for_, False, live=False, ui=(host, port, not no_ui))


def _run_lab(
    directory: Path,
    trials: int | None,
    for_: str | None,
    new: bool,
    live: bool,
    ui: tuple[str, int, bool] = ("127.0.0.1", 0, True),
    base_ref: str | None = None,
) -> None:
    from overnight.agents.supervisor import Supervisor
    from overnight.daemon import UiOptions, lab_services
    from overnight.lab.lab import Lab
    from overnight.lab.stop import Stop
    from overnight.lab.stop import interrupted as by_interrupt
    from overnight.wiring import Checks

    seconds = _duration("--for", for_) if for_ else None
    keep_private()
    lab = Lab.start(directory, checks=Checks(), new_run=new, base_ref=base_ref)
    for warning in lab.warnings:
        err.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)
    view = _Progress(lab, trials, seconds, live=live)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    why: Stop | None = None
    try:
        with lab_services(lab, _announce, UiOptions(*ui)) as services:
            supervisor = Supervisor(
                lab, trials=trials, seconds=seconds, on_trial=view.finished, services=services
            )
            try:
                with view.live():
                    supervisor.run()
                why = supervisor.stopped_by()
            except KeyboardInterrupt:
                why = by_interrupt()
                raise
            finally:
                # Before the command center stops: its audit follower takes the stop in.
                lab.stopped(why.payload() if why is not None else None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, _exit_now)
        view.summary(interrupted, why)
        lab.close()
    if interrupted and live:  # a service (`up`) stopped by a signal has done its job
        raise typer.Exit(130)
    if why is not None and why.rule == "crash_streak":  # the run could not go on
        raise typer.Exit(4)


@app.command("try")
def try_(
    description: Annotated[str, typer.Argument(help="What you changed, in one line.")],
    directory: Annotated[
        Path, typer.Option("--dir", "-C", help="The agent's worktree (default: here).")
    ] = Path("."),
) -> None:
    """Submit the work in an agent's worktree as a trial: commit, check, run, measure, then
    keep it (the agent's branch advances) or reset the worktree to the best commit.

    Meant for agents: run it from the worktree overnight gave you. Exit code 0 when the
    trial was measured (kept or discarded), 1 when it crashed, timed out or was rejected.
    """
    from overnight.lab.desk import desk_address

    signal.signal(signal.SIGTERM, _raise_interrupt)
    address = desk_address(directory)
    if address is not None:
        result = _try_at_desk(*address, description)
    else:
        result = _try_here(directory, description)
    _print_trial(result)


def _try_at_desk(url: str, key: str, description: str) -> dict[str, Any]:
    """The command center runs the trial (an agent in a sandbox cannot reach the store)."""
    from overnight.lab.desk import DeskClient

    desk = DeskClient(url, key)
    number, run = desk.submit(description)
    out.print(f"overnight: trial {number}: running `{run}` ...", markup=False)
    try:
        return desk.wait(number)
    except KeyboardInterrupt:
        desk.stop(number)
        out.print("overnight: interrupted; the trial is recorded as interrupted")
        raise typer.Exit(130) from None


def _try_here(directory: Path, description: str) -> dict[str, Any]:
    """No command center runs the lab: this process runs the trial itself."""
    from overnight.lab.desk import trial_json
    from overnight.lab.lab import Lab
    from overnight.lab.sharing import Sharing

    keep_private()
    lab, agent = Lab.attach(directory)
    if lab.config.gateway is not None:
        # the command center judges the trial (policies, approvals) and records it; this
        # is the agent's process, which must not
        from overnight.agents.external import gateway_url
        from overnight.agents.runtimes import key_of
        from overnight.governance.remote import RemoteJudge

        lab.judge = RemoteJudge(gateway_url(lab), key_of(lab.paths.key(agent)))
    stop = threading.Event()
    try:
        before = lab.agent(agent)
        out.print(f"overnight: trial for {agent}: running `{lab.config.lab.run}` ...", markup=False)
        trial = lab.try_worktree(agent, description, stop)
        adoption = Sharing(lab).consider(agent)
    except KeyboardInterrupt:
        out.print("overnight: interrupted; the trial is recorded as interrupted")
        raise typer.Exit(130) from None
    finally:
        lab.close()
    cfg = lab.config.lab
    return {
        **trial_json(trial),
        "metric_name": cfg.metric,
        "goal": cfg.goal.value,
        "best_before": before.best_metric,
        "adopted": adoption.message(cfg.metric) if adoption is not None else None,
    }


def _print_trial(result: dict[str, Any]) -> None:
    """What the agent reads about its trial; the exit code says how it went."""
    try:
        _print_result(result)
    finally:
        if result.get("adopted"):  # after the result, whatever it was
            out.print(result["adopted"], markup=False)


def _print_result(result: dict[str, Any]) -> None:
    number, status, reason = result["trial"], result["status"], result["reason"]
    metric, metric_name, best = result["metric"], result["metric_name"], result["best_before"]
    if status == "kept":
        change = ""
        if best:
            change = f", {(metric or 0) / best * 100 - 100:+.2f}% vs the best {best:.6g}"
        out.print(
            f"overnight: trial {number} KEPT: {metric_name} {metric:.6g}"
            f" ({result['goal']}{change}). Your branch advanced to"
            f" {(result['candidate_commit'] or '')[:10]}; build on it.",
            markup=False,
        )
        return
    if status == "discarded":
        out.print(
            f"overnight: trial {number} DISCARDED: {metric_name} {metric:.6g}; {reason}. The "
            "worktree is reset to the best commit (the diff is kept in the ledger); try "
            "something else.",
            markup=False,
        )
        return
    out.print(
        f"overnight: trial {number} {status.upper()}: {reason}."
        + (" The worktree is reset to the best commit." if status != "interrupted" else ""),
        markup=False,
    )
    tail = (result["log_tail"] or "").strip().splitlines()[-15:]
    if tail:
        out.print("overnight: last lines of the run:")
        for line in tail:
            out.print("  " + line, markup=False)
    if result["log_path"]:
        out.print(f"overnight: full log: {result['log_path']}", markup=False)
    raise typer.Exit(130 if status == "interrupted" else 1)


@app.command()
def notes(
    directory: Annotated[
        Path, typer.Argument(help="The lab, or an agent's worktree in it (default: here).")
    ] = Path("."),
) -> None:
    """The lab notebook: what every agent tried, kept, discarded or crashed, with deltas
    against the best and the baseline; kept trials first, then the newest.

    Agents: run it before choosing an experiment, so you do not repeat what failed. From
    an agent's worktree (its sandbox too) it asks the command center, like `overnight try`.
    """
    from overnight.lab.desk import DeskClient, desk_address

    address = desk_address(directory)
    text = DeskClient(*address).notes() if address is not None else _notes_here(directory)
    out.print(text, markup=False)


def _notes_here(directory: Path) -> str:
    """No command center runs the lab: read its store (a worktree reads its own run)."""
    from overnight.lab import notebook
    from overnight.lab.git import worktree_of
    from overnight.lab.ledger import open_view

    reader: str | None = None
    try:
        root, _run, reader = worktree_of(directory)
    except UserError:
        root = directory
    view = open_view(root)
    try:
        return notebook.read(view.store, view.run.id, view.config.lab, reader)
    finally:
        view.close()


@app.command(hidden=True)
def agent(
    worktree: Annotated[Path, typer.Argument(help="The agent's worktree.")],
) -> None:
    """Run one external CLI agent (started by `overnight run` in a terminal session)."""
    from overnight.agents.external import main as run_agent

    keep_private()
    run_agent(worktree)


@app.command()
def status(
    directory: Dir = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Where the latest run stands: trials, best metric, agents, what is running."""
    from overnight.lab.ledger import open_view
    from overnight.lab.ledger import status as lab_status

    view = _open_view(open_view, directory)
    try:
        data = lab_status(view)
    finally:
        view.close()
    if as_json:
        out.print_json(json.dumps(data))
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
        best = history["best"]
        out.print(
            f"imported: {history['trials']} trial(s) from {history['file']}, baseline "
            f"{_num(history['baseline'])}"
            + (f", best {_num(best['metric'])} (trial {best['trial']})" if best else ""),
            markup=False,
        )
    out.print(f"baseline {data['metric']}: {_num(data['baseline'])}")
    out.print(_keep_bar(data))
    holdout = data["holdout"]
    if best:
        change = (
            f" ({data['improvement_pct']:+.2f}%)" if data["improvement_pct"] is not None else ""
        )
        beside = f" · holdout {_num(best['holdout_metric'])}" if holdout else ""
        out.print(
            f"best {data['metric']}: [green]{_num(best['metric'])}[/]{change}{beside}"
            f" · trial {best['trial']} · {best['agent']} · {(best['commit'] or '')[:7]}"
            + (f" · branch {best['branch']}" if best["branch"] else "")
        )
    if holdout:
        out.print(
            f"hidden holdout {holdout['metric']}: baseline {_num(holdout['baseline'])}"
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
    now = time.time()
    for agent in data["agents"]:
        since = agent["state_since"]
        state = agent["state"] + (f" {_ago(now - since)}" if since else "")
        out.print(
            f"  {agent['name']:<14} {agent['runtime']:<11} {state:<15} trials {agent['trials']:<4}"
            f" kept {agent['kept']:<3} best {_num(agent['best_metric'])}"
        )
    for item in data["running"]:
        out.print(f"  now: trial {item['trial']} ({item['agent']}) {item['status']}")
    for item in data["interrupted"]:
        out.print(
            f"  stopped: trial {item['trial']} ({item['agent']}) was {item['status']} when "
            f"overnight stopped; {item['why']}",
            markup=False,
        )


@app.command()
def ledger(
    directory: Dir = Path("."),
    tsv: Annotated[
        bool, typer.Option("--tsv", help="autoresearch-compatible results.tsv.")
    ] = False,
) -> None:
    """Every finished trial of the latest run."""
    from overnight.lab import ledger as ledger_mod

    view = _open_view(ledger_mod.open_view, directory)
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


@app.command("import")
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
    from overnight.wiring import Checks

    keep_private()
    done = import_history(directory, results, from_, checks=Checks())
    for warning in done.warnings:
        err.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)
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
        out.print(f"baseline (line {first.line}): {_num(first.metric)}", markup=False)
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


@app.command()
def report(
    directory: Dir = Path("."),
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (.md or .html).")
    ] = None,
) -> None:
    """Write the morning report: summary, kept changes and a progress plot."""
    from overnight.lab import report as report_mod
    from overnight.lab.ledger import open_view

    if out_file is None:  # into the lab's state; a file the user names is theirs to share
        keep_private()
    view = _open_view(open_view, directory)
    try:
        path = report_mod.write(view, out_file.resolve() if out_file else None)
    finally:
        view.close()
    out.print(f"report: {path}")


@app.command()
def init(
    directory: Dir = Path("."),
    force: Annotated[
        bool,
        typer.Option("--force", help="Draft overnight.toml again over an existing one."),
    ] = False,
) -> None:
    """Draft a commented overnight.toml (and program.md, if there is none) in a git
    repository; an existing program.md is never touched."""
    from overnight.org.scaffold import init as scaffold_init

    done = scaffold_init(directory, force=force)
    d = done.draft
    out.print(f"wrote {done.config}", markup=False)
    if done.program_kept:
        out.print(
            f"kept {done.program} as it is (the agents' instructions are yours)", markup=False
        )
    else:
        out.print(f"wrote {done.program}", markup=False)
    layout = "the autoresearch layout" if d.autoresearch else "a layout"
    protected = f", {', '.join(d.protected)} protected" if d.protected else ""
    out.print(f"found {layout}: {', '.join(d.editable)} edited{protected}", markup=False)
    out.print(f"  run: {d.run}" + (f" ({d.uv})" if d.uv else ""), markup=False)
    if d.uv_missing:
        out.print("  uv is not on PATH here: install it before `overnight run`", markup=False)
    metric = (
        f"  metric: {d.metric}, {d.goal} ({d.goal_why})"
        if d.metric_found
        else f"  metric: none printed as `name: value` found; {d.metric!r} is a placeholder"
    )
    out.print(metric, markup=False)
    if d.record:
        out.print(f"  recorded too: {', '.join(d.record)}", markup=False)
    budget = f"  budget: {d.budget_s:g}s" + (f" (from {d.budget_from})" if d.budget_from else "")
    out.print(budget, markup=False)
    if d.knobs:
        out.print(f"  knobs: {len(d.knobs)} ({', '.join(k.name for k in d.knobs)})", markup=False)
    else:
        out.print("  knobs: none drafted (no top-level numbers in the editable files)")
    out.print(
        "next: review overnight.toml, commit it (`git add overnight.toml program.md && git "
        "commit -m 'overnight lab'`), then `overnight run`.",
        markup=False,
    )


@app.command()
def example(
    name: Annotated[str, typer.Argument(help='An example name, or "list".')],
    directory: Annotated[Path | None, typer.Argument(help="Where to create the lab.")] = None,
) -> None:
    """`overnight example list`, or `overnight example NAME DIR` to copy a lab into DIR."""
    from overnight.org.scaffold import copy_example, list_examples

    if name == "list":
        for example_name, title in list_examples().items():
            out.print(f"{example_name:<12} {title}")
        return
    if directory is None:
        raise UserError(f"say where to put it.\n  fix: `overnight example {name} DIR`.")
    path = copy_example(name, directory)
    out.print(f"created {path} (a git repository with one commit)")
    out.print(f"next: `overnight run {path} --trials 12`")


@app.command()
def gateway(
    directory: Dir = Path("."),
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="Read [gateway] from this file instead of overnight.toml."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (0 picks a free one).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
) -> None:
    """Serve the lab's LLM gateway alone: failover, translation, metering, budgets."""
    from overnight.gateway.config import load_gateway_config
    from overnight.gateway.server import quiet_gc
    from overnight.gateway.service import lab_gateway
    from overnight.org import load_org
    from overnight.store import open_store, store_url

    keep_private()
    org = load_org(directory)
    if config_file is not None:
        gw_config = load_gateway_config(config_file.resolve())
    elif org.config.gateway is not None:
        gw_config = org.config.gateway
    else:
        raise UserError(
            f"{org.config_path}: no [gateway] table.\n"
            "  fix: add [[gateway.upstreams]] and [gateway.models] (see README, Gateway), "
            "or pass --config FILE."
        )
    agents = {name: cfg.budget for name, cfg in org.config.agent_names()}
    store = open_store(store_url(org.root))
    run = store.latest_run(org.config.lab.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with lab_gateway(
            gw_config, store, org.config.lab.name, org.root, agents,
            run.id if run else None, host=host, port=port,
        ) as (url, keys):  # fmt: skip
            quiet_gc()
            out.print(f"gateway: {url}", soft_wrap=True)
            out.print(f"virtual keys: {keys[next(iter(keys))].parent}/<agent>", soft_wrap=True)
            out.print(
                f"point agents at it: ANTHROPIC_BASE_URL={url} OPENAI_BASE_URL={url}/v1",
                soft_wrap=True,
            )
            sys.stdout.flush()
            stop.wait()
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host or gw_config.host}:{gw_config.port if port is None else port}"
            f" ({exc.strerror}).\n  fix: pick another --port (0 for any free one)."
        ) from None
    finally:
        store.close()
    out.print("gateway stopped")


@app.command("fake-provider")
def fake_provider(
    protocol: Annotated[
        str, typer.Option(help="anthropic or openai (chat completions + responses).")
    ] = "anthropic",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    script: Annotated[Path | None, typer.Option(help="JSON list of scripted replies.")] = None,
    mode: Annotated[
        str, typer.Option(help="queue (replies in order) or conversation (by tool results so far).")
    ] = "queue",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve https with this certificate (PEM; with --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM).")
    ] = None,
) -> None:
    """A fake LLM provider on loopback that speaks the real wire format and injects faults."""
    from overnight.testing.fake_provider import serve

    serve(protocol, port, script, mode, tls_cert=tls_cert, tls_key=tls_key)


policy_app = typer.Typer(
    no_args_is_help=True,
    help="Governance policies: run their tests, or ask what they say about an action.",
)
app.add_typer(policy_app, name="policy")
_POLICY_EXIT = {"allow": 0, "review": 4, "deny": 5}


@policy_app.command("test")
def policy_test(directory: Dir = Path(".")) -> None:
    """Run the tests of every policy file the lab loads, the shipped defaults included.

    Exit code 0 when every test passes, 1 when one fails, 2 when a policy does not load.
    """
    from overnight.governance.policy import Policy
    from overnight.org import load_org

    org = load_org(directory)
    policy = Policy.load(org.root, org.config.governance)
    outcomes = policy.run_tests()
    failed = [o for o in outcomes if o.problem]
    for outcome in failed:
        out.print(Text("FAIL ", style="red") + Text(outcome.describe()))
    out.print(
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed · {len(policy.rules)} "
        f"rules and {len(policy.signals)} signals from {', '.join(policy.sources) or 'no file'}"
        f" · policy version {policy.version[:12]}",
        markup=False,
    )
    if failed:
        raise typer.Exit(1)


@policy_app.command("check")
def policy_check(
    action_json: Annotated[
        str,
        typer.Argument(
            metavar="ACTION_JSON",
            help='The action as JSON, or @FILE: \'{"kind": "shell", "command": "git push -f"}\'.',
        ),
    ],
    directory: Annotated[
        Path, typer.Option("--dir", "-C", help="The lab whose policy decides (default: here).")
    ] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What the lab's policy says about one action.

    Prints the decision, the rules that matched and why, the risk score and the
    policy version. The lab's `protected` globs are filled in unless the action
    gives its own.

    Exit code 0 allow, 4 review, 5 deny (2: bad input or a policy that does not load).
    """
    from overnight.governance.action import Action
    from overnight.governance.policy import Policy
    from overnight.org import load_org

    text = action_json
    if action_json.startswith("@"):
        try:
            text = Path(action_json[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{action_json[1:]}: cannot read it ({exc.strerror}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"ACTION_JSON is not valid JSON ({exc}).\n"
            '  fix: e.g. overnight policy check \'{"kind": "shell", "command": "ls"}\''
        ) from None
    org = load_org(directory)
    if isinstance(data, dict) and "protected" not in data:
        data["protected"] = list(org.config.lab.protected)
    try:
        action = Action.from_mapping(data)
    except ValueError as exc:
        raise UserError(f"ACTION_JSON: {exc}.") from None
    decision = Policy.load(org.root, org.config.governance).decide(action)
    if as_json:
        out.print_json(json.dumps({"action": action.to_dict(), **decision.to_dict()}))
    else:
        color = {"allow": "green", "review": "yellow", "deny": "red"}[decision.effect.value]
        out.print(f"[bold {color}]{decision.effect.value}[/] {escape(action.summary())}")
        for hit in decision.rules:
            effect = hit.effect.value if hit.effect else ""
            source = "" if hit.source in ("risk", "autonomy") else f" ({hit.source})"
            out.print(f"  {effect:<7} {hit.id}{source}: {hit.reason}", markup=False)
        for hit in decision.signals:
            out.print(f"  {hit.weight:+.2f}   {hit.id} ({hit.source}): {hit.reason}", markup=False)
        out.print(
            f"risk {decision.risk:.2f} · review at {decision.review_at:g}, deny at "
            f"{decision.deny_at:g} ({decision.autonomy}) · policy version {decision.policy_version}",
            markup=False,
        )
    code = _POLICY_EXIT[decision.effect.value]
    if code:
        raise typer.Exit(code)


# -- audit and approvals -----------------------------------------------------------------------

app.add_typer(notify_app, name="notify")  # overnight/notify_cli.py

audit_app = typer.Typer(
    no_args_is_help=True, help="The lab's hash-chained audit record: verify it, export it."
)
app.add_typer(audit_app, name="audit")


def _lab_store(directory: Path) -> Any:
    """The lab's store (an overnight.lab.ledger.LabStore); with a config that does not load,
    read anyway, after a warning saying why."""
    from overnight.lab.ledger import open_lab_store

    lab = open_lab_store(directory)
    _warn_config(lab.warning)
    return lab


def _open_view(open_view: Any, directory: Path) -> Any:
    """A view of the latest run; with a config that does not load, read anyway, after a
    warning saying why."""
    view = open_view(directory)
    _warn_config(view.lab.warning)
    return view


def _warn_config(warning: str | None) -> None:
    if warning:
        err.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)


@audit_app.command("verify")
def audit_verify(directory: Dir = Path(".")) -> None:
    """Recompute the audit chain and check its signed checkpoints. Exit 0 when intact,
    1 naming the first bad record (edited, deleted, inserted, reordered, truncated)."""
    from overnight.governance.audit import load_key, verify

    lab = _lab_store(directory)
    try:
        verdict = verify(lab.store, lab.name, load_key())
    finally:
        lab.close()
    if not verdict.ok:
        err.print(Text("error: ", style="red") + Text(verdict.summary()), soft_wrap=True)
        raise typer.Exit(1)
    out.print(verdict.summary(), markup=False)
    if verdict.unsigned and verdict.checkpoint is not None:
        err.print(
            f"warning: {verdict.unsigned} record(s) after seq {verdict.checkpoint} are not yet"
            " covered by a signed checkpoint",
            markup=False,
        )


@audit_app.command("export")
def audit_export(
    directory: Dir = Path("."),
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON record a line, with its hash.")
    ] = False,
) -> None:
    """Stream every audit record of the lab to stdout, oldest first."""
    from overnight.governance.audit import export_jsonl

    if not jsonl:
        raise UserError("say the format.\n  fix: `overnight audit export DIR --jsonl`.")
    lab = _lab_store(directory)
    try:
        export_jsonl(lab.store, lab.name, sys.stdout.write)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        lab.close()


@app.command("approvals")
def approvals_(directory: Dir = Path(".")) -> None:
    """The approvals inbox: actions agents are waiting on, with the ids to answer."""
    from overnight.governance.approvals import Approvals

    lab = _lab_store(directory)
    try:
        pending = Approvals(lab.store, lab.name).pending()
    finally:
        lab.close()
    if not pending:
        out.print("no pending approvals")
        return
    now = time.time()
    for a in pending:
        action = dict(a.action)
        what = next(
            (str(action[k]) for k in ("command", "path", "tool", "model") if action.get(k)), ""
        )
        risk = "" if a.risk is None else f" · risk {a.risk:.2f}"
        out.print(
            f"[bold]{a.id}[/]  {escape(a.agent)} · {escape(str(action.get('kind', 'action')))}"
            f"{risk} · asked {_ago(now - a.created_at)} ago · expires in {_ago(a.expires_at - now)}"
        )
        if what:
            out.print(f"    {what}", markup=False)
        out.print(f"    why: {a.reason}", markup=False)
    out.print("answer: `overnight approve ID [--note TEXT]` or `overnight deny ID [--note TEXT]`")


ApprovalId = Annotated[str, typer.Argument(help="The id `overnight approvals` shows.")]
Note = Annotated[str | None, typer.Option("--note", help="Why; kept with the answer.")]
LabOption = Annotated[Path, typer.Option("--dir", "-C", help="The lab (default: here).")]


@app.command()
def approve(approval_id: ApprovalId, note: Note = None, directory: LabOption = Path(".")) -> None:
    """Approve what an agent is waiting on; it resumes. Refused inside an agent's session."""
    _answer(approval_id, True, note, directory)


@app.command()
def deny(approval_id: ApprovalId, note: Note = None, directory: LabOption = Path(".")) -> None:
    """Deny what an agent is waiting on; it is told no. Refused inside an agent's session."""
    _answer(approval_id, False, note, directory)


def _answer(approval_id: str, approve: bool, note: str | None, directory: Path) -> None:
    import getpass

    from overnight.governance.approvals import Approvals, agent_context
    from overnight.governance.audit import Auditor

    why = agent_context([Path.cwd(), directory])
    if why:
        raise UserError(
            f"refused: no agent can answer an approval, and this looks like one ({why}).\n"
            "  fix: answer from your own terminal, outside the lab's worktrees, "
            "or in the command center."
        )
    lab = _lab_store(directory)
    try:
        auditor = Auditor(lab.store, lab.name, lab_root=lab.root)
        inbox = Approvals(lab.store, lab.name, auditor=auditor)
        a = inbox.answer(approval_id, approve, note, by=f"{getpass.getuser()} (cli)")
    finally:
        lab.close()
    color = "green" if a.status == "approved" else "red"
    out.print(f"approval {a.id} [{color}]{a.status}[/]: {escape(a.agent)} is told so.")


class _Progress:
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
            return _Nothing()
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
        metric = _num(trial.metric)
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
                    f"last: trial {last.number} {last.status.value} {_num(last.metric)} ({last.agent})"
                )
            )
        if best is not None:
            change = ""
            if base is not None and base.metric and best.metric is not None:
                change = (
                    f" ({(best.metric - base.metric) / abs(base.metric) * 100:+.1f}% vs baseline)"
                )
            lines.append(
                Text(f"best {_num(best.metric)}{change} · trial {best.number} · {best.agent}")
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
                f"best {lab.config.lab.metric} {_num(best.metric)} (trial {best.number}, {best.agent}) "
                f"vs baseline {_num(base.metric)}: {pct:+.2f}%"
            )
        agent = best_holder(lab.agents(), best)
        if agent:
            out.print(f"best branch: {agent.branch}")
        if interrupted:
            out.print("interrupted trials re-run when you start `overnight run` again.")
        out.print(f"next: `overnight report {lab.org.root}` for the plot and the kept changes")


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _announce(line: str) -> None:
    """A service's address; the command center's is the URL to click (its token included)."""
    if line.startswith("command center: "):
        url = line.removeprefix("command center: ")
        out.print(Text("command center: ") + Text(url, style=f"bold link {url}"), soft_wrap=True)
    else:
        out.print(line, soft_wrap=True, markup=False)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _exit_now(_signum: int, _frame: object) -> None:
    # a second Ctrl-C: leave at once; every finished step is already in the store
    os._exit(130)


def _ago(seconds: float) -> str:
    """How long, compactly: 42s, 7m, 3h05m."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def main() -> None:
    # `kill -USR1 PID` writes where every thread of this process is to its stderr: for a
    # command that seems stuck, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        # without standalone mode, click returns the code of a typer.Exit instead of exiting
        code = app(standalone_mode=False, prog_name="overnight")
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        err.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        sys.exit(2)
    except BaselineFailed as exc:
        err.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        sys.exit(3)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _usage_error()):
            # as click prints it: the usage line, where to find help, the error; exit code 2
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _usage_error() -> type[Any]:
    """The class of click's usage and parameter errors as typer raises them: typer 0.2x
    carries its own copy of click (`typer._click`), whose errors are not `click`'s."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # an older typer, on click itself
        from click import ClickException  # type: ignore[assignment]
    return ClickException
