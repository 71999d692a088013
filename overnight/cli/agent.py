"""The agent's side of a lab: `overnight try` and `overnight notes`, which an agent runs from
its worktree, and the hidden `overnight agent`, the process an external CLI agent runs in.

Owns what an agent reads about its trial and the exit code that says how it went
(0 measured, 1 crashed, timed out or rejected, 130 interrupted). With a command
center running the lab they ask it (`lab.desk`: an agent in a sandbox cannot
reach the store); without one, this process does the work itself.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overnight.cli.common import out, raise_interrupt
from overnight.errors import UserError
from overnight.lab.privacy import keep_private

if TYPE_CHECKING:
    from overnight.records import Trial

commands = typer.Typer()


@commands.command("try")
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

    signal.signal(signal.SIGTERM, raise_interrupt)
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
    try:
        if lab.experiments.cluster is not None:
            # as `overnight run` joins it before any run begins: a cluster that does not
            # answer is said before the trial is numbered (the change stays in the worktree)
            lab.experiments.cluster.connect()
            # and joining put Ray's SIGTERM handler in place (exit 15 midway): ours again
            signal.signal(signal.SIGTERM, raise_interrupt)
    except BaseException:
        lab.close()
        raise
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
        trial = _stopping_on_interrupt(lambda: lab.try_worktree(agent, description, stop), stop)
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


def _stopping_on_interrupt(work: Callable[[], Trial], stop: threading.Event) -> Trial:
    """`work()` in a thread; Ctrl-C (or SIGTERM) sets `stop` and waits for the trial to end,
    as `overnight run` stops its trials, then raises KeyboardInterrupt: on a Ray cluster the
    trial's task is cancelled, not left running on its node until its watchdog's kill."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["trial"] = work()
        except BaseException as exc:  # (raised again in the main thread)
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="trial", daemon=True).start()
    try:
        done.wait()  # (not join: a join interrupted once returns at once the next time)
    except KeyboardInterrupt:
        stop.set()
        done.wait()
        raise
    if "error" in box:
        raise box["error"]
    trial: Trial = box["trial"]
    return trial


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


@commands.command()
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


@commands.command(hidden=True)
def agent(
    worktree: Annotated[Path, typer.Argument(help="The agent's worktree.")],
) -> None:
    """Run one external CLI agent (started by `overnight run` in a terminal session)."""
    from overnight.agents.external import main as run_agent

    keep_private()
    run_agent(worktree)
