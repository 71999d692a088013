"""`overnight run` and `overnight up`: running a lab.

Owns starting the lab with its services (gateway, command center, supervisor),
the signals that stop it, and the exit codes of a run (130 interrupted, 4 every
agent paused for its crash streak). The terminal view is `progress`'s.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from overnight.cli.common import Dir, out, raise_interrupt, warn
from overnight.errors import UserError
from overnight.lab.privacy import keep_private

if TYPE_CHECKING:
    from overnight.lab.lab import Lab

commands = typer.Typer()

For = Annotated[
    str | None, typer.Option("--for", help='Stop starting trials after this long, e.g. "8h".')
]
UiHost = Annotated[
    str, typer.Option("--host", help="Where the command center listens (default loopback only).")
]
UiPort = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="The command center's port (0: any).")
]
NoUi = Annotated[bool, typer.Option("--no-ui", help="Do not serve the command center.")]


@commands.command()
def run(
    directory: Dir = Path("."),
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Stop after N more trials.")
    ] = None,
    for_: For = None,
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


@commands.command()
def up(
    directory: Dir = Path("."),
    for_: For = None,
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
    from overnight.cli.progress import Progress
    from overnight.costs.config import config_bytes, save
    from overnight.daemon import UiOptions, lab_services
    from overnight.lab.lab import Lab
    from overnight.lab.stop import Stop
    from overnight.lab.stop import interrupted as by_interrupt
    from overnight.wiring import Checks

    seconds = _duration("--for", for_) if for_ else None
    keep_private()
    text = config_bytes(directory.resolve())  # (read before it is loaded: see `save`)
    lab = Lab.start(directory, checks=Checks(), new_run=new, base_ref=base_ref)
    if text is not None:
        save(lab.org.root, text, lab.org.config)  # `overnight costs` answers quickly at once
    for warning in lab.warnings:
        warn(warning)
    view = Progress(lab, trials, seconds, live=live)
    signal.signal(signal.SIGTERM, raise_interrupt)
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
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            # (started with SIGINT ignored, as a shell starts a job in the background: it
            # stays ignored to the end, as during the run; SIGTERM stops the run)
            signal.signal(signal.SIGINT, _exit_now)
        view.summary(interrupted, why)
        _report(lab)
        lab.close()
    if interrupted and live:  # a service (`up`) stopped by a signal has done its job
        raise typer.Exit(130)
    if why is not None and why.rule == "crash_streak":  # the run could not go on
        raise typer.Exit(4)


def _report(lab: Lab) -> None:
    """The morning report, written as the run ends (a person reads it over coffee)."""
    from overnight.lab import report
    from overnight.lab.ledger import LabStore, LabView

    if lab.baseline() is None:
        return  # nothing was measured: nothing to tell
    view = LabView(LabStore(lab.org.root, lab.config.lab.name, lab.store, lab.org), lab.run,
                   lab.config)  # fmt: skip
    path = report.write(view)
    out.print(f"report: {path.with_suffix('.html')} (and {path.name})", markup=False)


def _duration(flag: str, value: str) -> float:
    from overnight.units import parse_duration

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


def _exit_now(_signum: int, _frame: object) -> None:
    # a second Ctrl-C: leave at once; every finished step is already in the store
    os._exit(130)
