"""`overnight approvals`, `approve` and `deny`: the approvals inbox in the terminal.

Owns listing what agents are waiting on and answering it, as the user who runs
the command; answering is refused where an agent would be the one asking. The
inbox is `governance.approvals`'s, the same the command center answers through.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from overnight.cli.common import Dir, lab_store, out
from overnight.errors import UserError

commands = typer.Typer()


@commands.command("approvals")
def approvals_(directory: Dir = Path(".")) -> None:
    """The approvals inbox: actions agents are waiting on, with the ids to answer."""
    from overnight.governance.approvals import Approvals
    from overnight.units import span

    lab = lab_store(directory)
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
            f"{risk} · asked {span(now - a.created_at)} ago · expires in {span(a.expires_at - now)}"
        )
        if what:
            out.print(f"    {what}", markup=False)
        out.print(f"    why: {a.reason}", markup=False)
    out.print("answer: `overnight approve ID [--note TEXT]` or `overnight deny ID [--note TEXT]`")


ApprovalId = Annotated[str, typer.Argument(help="The id `overnight approvals` shows.")]
Note = Annotated[str | None, typer.Option("--note", help="Why; kept with the answer.")]
LabOption = Annotated[Path, typer.Option("--dir", "-C", help="The lab (default: here).")]


@commands.command()
def approve(approval_id: ApprovalId, note: Note = None, directory: LabOption = Path(".")) -> None:
    """Approve what an agent is waiting on; it resumes. Refused inside an agent's session."""
    _answer(approval_id, True, note, directory)


@commands.command()
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
    lab = lab_store(directory)
    try:
        auditor = Auditor(lab.store, lab.name, lab_root=lab.root)
        inbox = Approvals(lab.store, lab.name, auditor=auditor)
        a = inbox.answer(approval_id, approve, note, by=f"{getpass.getuser()} (cli)")
    finally:
        lab.close()
    color = "green" if a.status == "approved" else "red"
    out.print(f"approval {a.id} [{color}]{a.status}[/]: {escape(a.agent)} is told so.")
