"""`overnight init` and `overnight example`: making a lab.

Owns what the terminal says about the overnight.toml drafted for a repository
(what was found, what is a placeholder) and about a copied example. The drafting
and copying are `org.scaffold`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overnight.cli.common import Dir, out
from overnight.errors import UserError

commands = typer.Typer()


@commands.command()
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


@commands.command()
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
