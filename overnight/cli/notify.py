"""`overnight notify`: the notifications' commands (`test`), a typer app the CLI mounts.

Owns what the terminal shows of them and their exit codes; the sending is
`overnight.notify`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from overnight.errors import UserError

app = typer.Typer(
    no_args_is_help=True,
    help="Notifications: test the lab's sinks (webhook, ntfy, email, browser).",
)
out = Console(highlight=False, soft_wrap=True)

Dir = Annotated[Path, typer.Argument(help="The lab: a git repository with overnight.toml.")]


@app.command("test")
def test(directory: Dir = Path(".")) -> None:
    """Send a test message to every sink and say what each answered. Exit 0 when every
    one took it, 1 when any did not."""
    from overnight.notify import test as send_test
    from overnight.org import load_org
    from overnight.paths import StateDir
    from overnight.store import open_store, store_exists, store_url

    org = load_org(directory)
    config = org.config
    if not config.notify and not config.governance.webhook:
        raise UserError(
            f"{org.config_path}: notify: no sink to test.\n"
            '  fix: add one, e.g. [[notify]] with kind = "ntfy" and url = '
            '"https://ntfy.sh/your-topic" (see the README\'s Notifications).'
        )
    url = store_url(org.root)
    store = open_store(url) if store_exists(url) else None
    try:
        run = store.latest_run(config.lab.name) if store is not None else None
        try:
            web = StateDir.of(org.root).web_url.read_text(encoding="utf-8").split("/?", 1)[0]
        except OSError:
            web = None
        answers = send_test(config, org.config_path, store, run, web or None)
    finally:
        if store is not None:
            store.close()
    failed = 0
    for a in answers:
        head = Text(f"{a.sink} ({a.kind}, {a.where}): ")
        if a.delivered:
            out.print(head + Text("delivered", style="green") + Text(f" — {a.said}"))
        else:
            failed += 1
            out.print(head + Text("failed", style="red") + Text(f" — {a.said}"))
    if failed:
        raise typer.Exit(1)
