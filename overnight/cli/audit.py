"""`overnight audit verify` and `overnight audit export`: the lab's hash-chained audit
record, checked or streamed out.

Owns the verdict's wording and exit code (0 intact, 1 naming the first bad record)
and streaming the export to stdout (a reader that stops early, `| head`, is no
error). The chain is `governance.audit`'s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from overnight.cli.common import Dir, err, lab_store, out
from overnight.errors import UserError

app = typer.Typer(
    no_args_is_help=True, help="The lab's hash-chained audit record: verify it, export it."
)


@app.command("verify")
def audit_verify(directory: Dir = Path(".")) -> None:
    """Recompute the audit chain and check its signed checkpoints. Exit 0 when intact,
    1 naming the first bad record (edited, deleted, inserted, reordered, truncated)."""
    from overnight.governance.audit import load_key, verify

    lab = lab_store(directory)
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


@app.command("export")
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
    lab = lab_store(directory)
    try:
        export_jsonl(lab.store, lab.name, sys.stdout.write)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        lab.close()
