"""The `overnight` command: a thin typer layer over the lab's service API.

Owns argument parsing, what the terminal shows, and exit codes (0 ok, 1 our
bug, 2 bad input, 3 the baseline could not be measured, 4 every agent was paused
for its crash streak, 130 interrupted). One module per group of commands: `run`
(run, up), `agent` (try and notes, which an agent runs, and the hidden agent),
`ledger` (status, ledger, import, report), `scaffold` (init, example), `gateway`
(gateway, fake-provider), `approvals` (approvals, approve, deny), `policy` and
`audit` (their sub-commands); `progress` is the live view of `overnight run`,
`common` what the commands share, and `app` puts them together and runs them.
"""

from overnight.cli.app import app, main

__all__ = ["app", "main"]
