"""The `overnight` app: every group of commands put together, and `main`, which runs it.

Owns the top-level options (`--version`), the order the commands are listed in,
and turning what a command raises into the exit code and message the user sees
(2 bad input, 3 the baseline could not be measured, 130 interrupted; a usage
mistake as click prints it). Knows nothing about what any command does.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from overnight import __version__
from overnight.cli import (
    agent,
    approvals,
    audit,
    costs,
    gateway,
    ledger,
    notify,
    policy,
    run,
    scaffold,
)
from overnight.cli.common import err, out
from overnight.errors import BaselineFailed, UserError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run a team of agents on a repository with a metric; keep what improves, all night.",
)
# In this order in `overnight --help`; the groups with sub-commands after the commands.
for commands in (
    run.commands,
    agent.commands,
    ledger.commands,
    costs.commands,
    scaffold.commands,
    gateway.commands,
    approvals.commands,
):
    app.add_typer(commands)
app.add_typer(policy.app, name="policy")
app.add_typer(audit.app, name="audit")
app.add_typer(notify.app, name="notify")


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


def main() -> None:
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
