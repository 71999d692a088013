"""`overnight policy test` and `overnight policy check`: the lab's governance policies.

Owns running the policies' own tests and showing what they decide about one
action (the rules that matched, the risk score, the policy version), with the
decision as the exit code (0 allow, 4 review, 5 deny). The policies are
`governance.policy`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from overnight.cli.common import Dir, out, print_json
from overnight.errors import UserError

app = typer.Typer(
    no_args_is_help=True,
    help="Governance policies: run their tests, or ask what they say about an action.",
)
_EXIT = {"allow": 0, "review": 4, "deny": 5}


@app.command("test")
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


@app.command("check")
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
        print_json({"action": action.to_dict(), **decision.to_dict()})
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
    code = _EXIT[decision.effect.value]
    if code:
        raise typer.Exit(code)
