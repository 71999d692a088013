"""The `overnight` command: a thin typer layer over the lab's service API.

Owns argument parsing, what the terminal shows, and exit codes (0 ok, 1 our
bug, 2 bad input, 3 the baseline could not be measured, 4 every agent was paused
for its crash streak, 130 interrupted). One module per group of commands: `run`
(run, up), `agent` (try and notes, which an agent runs, and the hidden agent),
`ledger` (status, ledger, import, report), `scaffold` (init, example), `gateway`
(gateway, fake-provider), `approvals` (approvals, approve, deny), `policy` and
`audit` (their sub-commands); `progress` is the live view of `overnight run`,
`common` what the commands share, and `app` puts them together and runs them;
`quick` answers `overnight costs` before the app is built (see `main`).
"""

from __future__ import annotations

import faulthandler
import signal
import sys


def main() -> None:
    """The `overnight` command: `quick`'s answer if it has one, else the app's. The app is
    imported only when needed: building it imports typer, rich and every command's
    modules, several times what `overnight costs --json` takes to answer."""
    from overnight.cli import quick

    # `kill -USR1 PID` writes where every thread of this process is to its stderr: for a
    # command that seems stuck, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        if quick.answer(sys.argv[1:]):
            return
    except KeyboardInterrupt:
        sys.exit(130)
    from overnight.cli.app import main as run_app

    run_app()


__all__ = ["main"]
