"""Policies as code: loading (and refusing to load), deciding, risk, autonomy, the CLI."""

from __future__ import annotations

import json
import random
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.errors import ConfigError
from overnight.governance.action import Action, Kind, edits_from_paths
from overnight.governance.decision import Effect
from overnight.governance.expressions import Activation, _env, compile_expression
from overnight.governance.policy import SHIPPED, Policy
from overnight.governance.risk import Thresholds
from overnight.org import parse_config
from tests.helpers import REPO
from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli

# exactly the example of the issue, comment and escaping included
ISSUE_EXAMPLE = """\
rules:
  - id: no-force-push
    when: 'action.kind == "shell" && action.command.matches("git\\\\s+push\\\\b.*--force")'
    effect: deny            # allow | review | deny
    reason: force pushes rewrite shared history
tests:
  - action: {kind: shell, command: "git push --force origin main", agent: a1}
    expect: deny
"""

SHIPPED_POLICY = Policy.from_files([])


def policy_file(tmp_path: Path, text: str, name: str = "team.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> Policy:
    return Policy.from_files([policy_file(tmp_path, text)], **kwargs)  # type: ignore[arg-type]


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, defaults=False)
    return str(info.value)


def governed_lab(tmp_path: Path, files: dict[str, str], governance: str) -> Path:
    return make_lab(tmp_path / "lab", files=files, extra=governance)


# -- the shipped defaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    range(len(SHIPPED_POLICY.tests)),
    ids=lambda i: SHIPPED_POLICY.tests[i].action.summary(),
)
def test_every_shipped_test_passes(index: int) -> None:
    test = SHIPPED_POLICY.tests[index]
    decision = SHIPPED_POLICY.decide(test.action)
    assert decision.effect is test.expect, decision.to_dict()
    matched = {*decision.rule_ids, *(s.id for s in decision.signals)}
    assert set(test.rules) <= matched, decision.to_dict()


def test_every_shipped_rule_and_signal_has_a_test_that_hits_it() -> None:
    named = {r for t in SHIPPED_POLICY.tests for r in t.rules}
    ids = [r.id for r in SHIPPED_POLICY.rules] + [s.id for s in SHIPPED_POLICY.signals]
    assert ids and not [i for i in ids if i not in named]
    assert {r.effect for r in SHIPPED_POLICY.rules} == {Effect.deny}


def test_policy_test_runs_every_file_through_the_cli(tmp_path: Path) -> None:
    lab = governed_lab(
        tmp_path,
        {"policies/team.yaml": ISSUE_EXAMPLE},
        '[governance]\npolicies = ["policies/*.yaml"]\n',
    )
    result = run_cli("policy", "test", str(lab))
    assert result.returncode == 0, result.stderr
    total = len(SHIPPED_POLICY.tests) + 1
    assert f"{total} passed, 0 failed" in result.stdout
    assert "default.yaml (shipped), policies/team.yaml" in result.stdout

    failing = ISSUE_EXAMPLE + (
        '  - action: {kind: shell, command: "git push -f origin main"}\n'
        "    expect: allow\n"
        "    rules: [no-force-push]\n"
    )
    (lab / "policies" / "team.yaml").write_text(failing)
    result = run_cli("policy", "test", str(lab))
    assert result.returncode == 1, result.stdout
    assert "FAIL policies/team.yaml:9 tests[1] (shell: git push -f origin main)" in result.stdout
    assert "expected allow (by no-force-push), got deny" in result.stdout
    assert f"{total} passed, 1 failed" in result.stdout


def test_the_issue_example_loads_as_written(tmp_path: Path) -> None:
    policy = load(tmp_path, ISSUE_EXAMPLE)
    assert [o.problem for o in policy.run_tests() if o.test.source.endswith("team.yaml")] == [None]
    decision = policy.decide(Action.shell("git   push origin main --force"))
    assert decision.effect is Effect.deny
    # the lab's rule sits beside the shipped one of the same id; each names its file
    assert [(h.id, h.source) for h in decision.rules if h.id == "no-force-push"] == [
        ("no-force-push", "default.yaml (shipped)"),
        ("no-force-push", str(tmp_path / "team.yaml")),
    ]
    assert "force pushes rewrite shared history" in decision.reason


# -- refusing to load ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "needles"),
    [
        ('action.kind == "shell" &&', ["Syntax error", "^"]),
        ('action.command.startswith("git")', ["undeclared reference to 'startswith'"]),
        ('actoin.kind == "shell"', ["undeclared reference to 'actoin.kind'"]),
        ('"x" + 1 == "x1"', ["no matching overload for '_+_'"]),
        ('action.comand == "ls"', ["the action has no field 'comand'", "did you mean 'command'"]),
        ('action.command.matches("git(push")', ["invalid regular expression", "missing )"]),
        ('action.command.matches(r"(?=x)y")', ["invalid perl operator"]),
        ("action.kind", ["gives 'shell', not true or false"]),
        ('action.extra.url.startsWith("http")', ["fails on a", "has(action.extra.url)"]),
    ],
)
def test_a_bad_condition_names_file_line_rule_and_the_cel_error(
    tmp_path: Path, when: str, needles: list[str]
) -> None:
    text = f"""\
    rules:
      - id: fine
        when: 'action.kind == "edit"'
        effect: review
        reason: ok
      - id: broken-rule
        when: '{when.replace("'", "''")}'
        effect: deny
        reason: broken
    """
    message = load_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'team.yaml'}:7: rules[1].when: "), message
    assert "'broken-rule'" in message
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("rule:\n  - id: x\n", ["unknown key 'rule' in a policy file", "did you mean 'rules'"]),
        (
            "rules:\n  - id: x\n    when: 'true'\n    efect: deny\n    reason: r\n",
            [":4: rules[0].efect", "unknown key 'efect' in a rule", "did you mean 'effect'"],
        ),
        (
            "rules:\n  - id: x\n    when: 'true'\n    effect: block\n    reason: r\n",
            [":4: rules[0].effect", "'block' is not an effect", "use allow, review or deny"],
        ),
        (
            "tests:\n  - action: {kind: shell}\n    expected: deny\n",
            ["unknown key 'expected' in a test", "did you mean 'expect'"],
        ),
        (
            "tests:\n  - action: {kind: shell, comand: ls}\n    expect: deny\n",
            [":2: tests[0].action", "unknown action field(s) comand"],
        ),
        (
            "tests:\n  - action: {kind: shel}\n    expect: deny\n",
            ["kind 'shel' is not one of shell"],
        ),
        (
            "signals:\n  - id: s\n    when: 'true'\n    weight: 3\n",
            [":4: signals[0].weight", "weight 3 is not a number from -1 to 1"],
        ),
        (
            "rules:\n  - id: x\n    when: 'true'\n    when: 'false'\n    effect: deny\n    reason: r\n",
            [":4:", "key 'when' appears twice"],
        ),
        (
            "rules:\n  - {id: a, when: 'true', effect: deny, reason: r}\n"
            "  - {id: a, when: 'false', effect: deny, reason: r}\n",
            [":3: rules[1].id", "id 'a' is already used in this file (line 2)"],
        ),
        (
            "rules:\n  - {id: a, when: 'true', effect: deny, reason: r}\n"
            "tests:\n  - {action: {kind: tool}, expect: deny, rules: [b]}\n",
            ["tests[0].rules", "rule(s) 'b'"],
        ),
        ("rules: [\n", ["not valid YAML"]),
        ("", ["is not a policy file"]),
    ],
)
def test_bad_policy_files_are_refused(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = load_error(tmp_path, text)
    assert message.startswith(str(tmp_path / "team.yaml")), message
    for needle in needles:
        assert needle in message, message


def test_a_bad_policy_stops_overnight_run_before_anything_starts(tmp_path: Path) -> None:
    broken = ISSUE_EXAMPLE.replace("action.command.matches", "action.command.match")
    lab = governed_lab(
        tmp_path, {"policies/team.yaml": broken}, '[governance]\npolicies = ["policies/*.yaml"]\n'
    )
    result = run_cli("run", str(lab), "--trials", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{lab / 'policies' / 'team.yaml'}:3: rules[0].when" in result.stderr
    assert "rule 'no-force-push' does not compile" in result.stderr
    assert "undeclared reference to 'match'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()  # no run was created


def test_governance_table_is_checked(tmp_path: Path) -> None:
    lab_toml = '[lab]\nname = "x"\neditable = ["a.py"]\nrun = "python a.py"\nmetric = "m"\n'
    config = parse_config(lab_toml + '[governance]\napproval_timeout = "30m"\n', Path("o.toml"))
    assert config.governance.approval_timeout == 1800.0
    assert config.governance.defaults and config.governance.policies == []
    with pytest.raises(ConfigError, match=r"review_at \(0.9\) is above deny_at \(0.8\)"):
        parse_config(lab_toml + "[governance]\nreview_at = 0.9\ndeny_at = 0.8\n", Path("o.toml"))
    with pytest.raises(ConfigError, match=r"governance\.polices"):
        parse_config(lab_toml + '[governance]\npolices = ["p.yaml"]\n', Path("o.toml"))

    lab = governed_lab(tmp_path, {}, '[governance]\npolicies = ["policy/*.yml"]\n')
    result = run_cli("policy", "test", str(lab))
    assert result.returncode == 2
    assert "governance.policies[0]: 'policy/*.yml' matches no file" in result.stderr


# -- deciding ------------------------------------------------------------------------------


def test_a_condition_that_fails_on_an_action_denies_it_and_says_why(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        rules:
          - id: ratio
            when: 'has(action.extra.n) && 10 / action.extra.n > 1'
            effect: review
            reason: small n
          - id: pattern-from-extra
            when: 'has(action.extra.re) && action.command.matches(action.extra.re)'
            effect: review
            reason: matches the given pattern
          - id: any-shell
            when: 'action.kind == "shell"'
            effect: review
            reason: a shell command
        signals:
          - id: weird
            when: 'has(action.extra.w) && action.extra.w.size() > 1'
            weight: 0.1
        """,
        defaults=False,
    )
    assert policy.decide(Action.shell("ls", extra={"n": 5})).effect is Effect.review

    decision = policy.decide(Action.shell("ls", extra={"n": 0, "re": "(", "w": 3}))
    assert decision.effect is Effect.deny
    by_id = {h.id: h for h in decision.rules}
    assert by_id["ratio"].effect is Effect.deny
    assert (
        "rule ratio could not be evaluated (divide by zero); failing closed"
        in by_id["ratio"].reason
    )
    assert "invalid regular expression '('" in by_id["pattern-from-extra"].reason
    assert "signal weird could not be evaluated" in by_id["weird"].reason
    assert by_id["any-shell"].effect is Effect.review  # the others are still judged


def test_missing_fields_read_as_zero_values(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        rules:
          - {id: cmd, when: 'action.command.matches("rm")', effect: deny, reason: r}
          - {id: cost, when: 'action.est_cost_usd > 1', effect: deny, reason: r}
          - {id: trial, when: 'action.trial > 3 && action.url == ""', effect: deny, reason: r}
          - {id: prot, when: 'action.protected.exists(g, g == action.path)', effect: deny, reason: r}
        """,
        defaults=False,
    )
    decision = policy.decide(Action(kind=Kind.read, path="/x"))
    assert decision.effect is Effect.allow and decision.rules == ()
    assert policy.decide(Action.shell("rm -f x")).rule_ids == ["cmd"]
    assert policy.decide(Action.llm("m", 2)).rule_ids == ["cost"]
    assert policy.decide(Action.keep(0.1, 0.2, trial=4)).rule_ids == ["trial"]


def test_risk_is_a_clamped_sum_of_signal_weights(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        signals:
          - {id: a, when: 'action.command.contains("a")', weight: 0.3}
          - {id: b, when: 'action.command.contains("b")', weight: 0.3}
          - {id: c, when: 'action.command.contains("c")', weight: 0.4}
          - {id: safe, when: 'action.command.contains("safe")', weight: -0.5, reason: known safe}
        """,
        defaults=False,
        thresholds=Thresholds(review_at=0.5, deny_at=0.9),
    )

    def judged(command: str) -> tuple[float, Effect]:
        d = policy.decide(Action.shell(command))
        return round(d.risk, 6), d.effect

    assert judged("a") == (0.3, Effect.allow)
    assert judged("a b") == (0.6, Effect.review)
    assert judged("a b c") == (1.0, Effect.deny)
    assert judged("a b c c c") == (1.0, Effect.deny)  # each signal counts once
    assert judged("a b safe") == (0.1, Effect.allow)
    assert judged("safe") == (0.0, Effect.allow)  # clamped at 0
    reason = policy.decide(Action.shell("a b c")).reason
    assert reason == "risk 1.00 is at or above deny_at 0.9"


def test_autonomy_levels_shift_the_decision() -> None:
    policy = SHIPPED_POLICY
    wt = "/lab/.overnight/worktrees/r/a"

    def effect(action: Action) -> Effect:
        return policy.decide(action).effect

    curious = {"autonomy": "curious", "worktree": wt}
    assert effect(Action.edit("train.py", **curious)) is Effect.deny
    assert effect(Action.shell("python train.py", **curious)) is Effect.deny
    assert effect(Action.shell("echo hi > notes.txt", **curious)) is Effect.deny
    assert effect(Action.keep(0.4, 0.1, **curious)) is Effect.deny
    assert effect(Action(kind=Kind.tool, tool="mcp__db__drop", **curious)) is Effect.deny
    assert effect(Action.shell("git log --oneline | head -20", **curious)) is Effect.allow
    assert effect(Action(kind=Kind.read, path=f"{wt}/train.py", **curious)) is Effect.allow
    assert effect(Action(kind=Kind.tool, tool="TodoWrite", **curious)) is Effect.allow
    assert "curious agents are read-only" in policy.decide(Action.edit("x", **curious)).reason

    # ready: thresholds 0.2 lower, every keep reviewed
    ready = policy.decide(Action.shell("rm -rf build", autonomy="ready"))
    assert (ready.effect, ready.review_at, ready.deny_at) == (Effect.review, 0.3, 0.65)
    assert policy.decide(Action.keep(0.4, 0.1, autonomy="ready")).rule_ids == ["autonomy-ready"]
    assert effect(Action.keep(0.4, 0.1, autonomy="ready")) is Effect.review

    embedded = policy.decide(Action.shell("rm -rf build", autonomy="embedded"))
    assert (embedded.effect, embedded.review_at, embedded.deny_at) == (Effect.allow, 0.5, 0.85)
    assert effect(Action.keep(0.4, 0.1, autonomy="embedded")) is Effect.allow


def test_version_is_a_content_hash_of_every_file_and_the_thresholds(tmp_path: Path) -> None:
    path = policy_file(tmp_path, ISSUE_EXAMPLE)
    first = Policy.from_files([path]).version
    assert Policy.from_files([path]).version == first
    decision = Policy.from_files([path]).decide(Action.shell("ls"))
    assert decision.policy_version == first and len(first) == 64

    path.write_text(ISSUE_EXAMPLE.replace("shared history", "shared history!"))
    changed = Policy.from_files([path]).version
    assert changed != first
    assert Policy.from_files([path], thresholds=Thresholds(0.4, 0.85)).version != changed
    assert Policy.from_files([path], defaults=False).version != changed


def test_matches_is_rewritten_only_in_code(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        rules:
          - id: literal
            when: >-
              action.command == "matches(x)" || action.command == 'matches("y")' ||
              matches(action.command, r"^zz+$") // matches( in a comment "
            effect: deny
            reason: r
        """,
        defaults=False,
    )
    for command, effect in [("matches(x)", "deny"), ('matches("y")', "deny"), ("zzz", "deny")]:
        assert policy.decide(Action.shell(command)).effect.value == effect
    assert policy.decide(Action.shell("z")).effect is Effect.allow


_PATTERNS = [r"\bgit\s+push\b", r"^a+b?$", r"(x|y)\d{2,}", r"[^/]*\.py$", r"(?i)secret", r"a.c"]


@given(
    pattern=st.sampled_from(_PATTERNS),
    text=st.text(alphabet="abcxyAB01 /.\\gitpushSECRET", max_size=30),
)
def test_matches_agrees_with_stock_cel(pattern: str, text: str) -> None:
    ours = compile_expression("action.command.matches(action.path)")
    stock = _env().compile("action.command.matches(action.path)")  # cel-cpp's own matches
    activation = Activation({"command": text, "path": pattern})
    assert ours.evaluate(activation) is stock.eval(activation.native).value()


# -- the action model ----------------------------------------------------------------------


def test_hook_payloads_become_actions() -> None:
    wt = "/lab/.overnight/worktrees/r/claude"
    ctx = {"agent": "claude", "worktree": wt, "autonomy": "ready", "protected": ["judge.py"]}

    def from_hook(tool: str, tool_input: dict[str, object], cwd: str = wt) -> Action:
        payload = {"tool_name": tool, "tool_input": tool_input, "cwd": cwd, "agent": "forged"}
        return Action.from_hook(payload, **ctx)  # type: ignore[arg-type]

    bash = from_hook("Bash", {"command": "git status", "description": "status"})
    assert (bash.kind, bash.command, bash.tool, bash.agent) == (
        Kind.shell,
        "git status",
        "Bash",
        "claude",
    )
    assert bash.extra == {"description": "status"} and bash.protected == ("judge.py",)
    for tool, key in [
        ("Edit", "file_path"),
        ("Write", "file_path"),
        ("MultiEdit", "file_path"),
        ("NotebookEdit", "notebook_path"),
    ]:
        edit = from_hook(tool, {key: "../judge.py", "content": "x"}, cwd=f"{wt}/src")
        assert (edit.kind, edit.path, edit.relpath) == (Kind.edit, f"{wt}/judge.py", "judge.py")
    read = from_hook("Read", {"file_path": "/etc/passwd"})
    assert (read.kind, read.path, read.relpath) == (Kind.read, "/etc/passwd", "")
    grep = from_hook("Grep", {"pattern": "TODO"})
    assert (grep.kind, grep.path, grep.extra) == (Kind.read, wt, {"pattern": "TODO"})
    assert from_hook("Glob", {"pattern": "**/*.py", "path": "src"}).path == f"{wt}/src"
    fetch = from_hook("WebFetch", {"url": "https://x.example/a", "prompt": "p"})
    assert (fetch.kind, fetch.url) == (Kind.network, "https://x.example/a")
    assert from_hook("WebSearch", {"query": "cel"}).kind is Kind.network
    mcp = from_hook("mcp__github__create_issue", {"title": "t"})
    assert (mcp.kind, mcp.tool, mcp.extra) == (
        Kind.tool,
        "mcp__github__create_issue",
        {"title": "t"},
    )
    with pytest.raises(ValueError, match="no tool_name"):
        Action.from_hook({"tool_input": {}}, agent="a", worktree=wt)
    with pytest.raises(ValueError, match=r"tool_input\.command is not a string"):
        from_hook("Bash", {"command": ["rm", "-rf"]})

    decision = SHIPPED_POLICY.decide(from_hook("Edit", {"file_path": f"{wt}/judge.py"}))
    assert decision.effect is Effect.deny and "protected-files-untouchable" in decision.rule_ids


def test_a_trial_diff_is_one_edit_per_changed_path() -> None:
    wt = "/lab/.overnight/worktrees/r/a"
    edits = edits_from_paths(
        ["train.py", "judge.py"], worktree=wt, agent="a", protected=["judge.py"]
    )
    assert [(e.kind, e.path, e.relpath) for e in edits] == [
        (Kind.edit, f"{wt}/train.py", "train.py"),
        (Kind.edit, f"{wt}/judge.py", "judge.py"),
    ]
    assert [SHIPPED_POLICY.decide(e).effect for e in edits] == [Effect.allow, Effect.deny]


@pytest.mark.parametrize(
    ("command", "read_only"),
    [
        ("ls -la", True),
        ("git status && git diff HEAD~1 | head -40", True),
        ("git -C /tmp/x log --oneline", True),
        ("grep -rn forward models/ 2>/dev/null | sort | head", True),
        ("cat < notes.txt", True),
        ("echo 'a > b'", True),
        ("echo hi > notes.txt", False),
        ("cat a >> b", False),
        ("python train.py", False),
        ("ls; rm -rf x", False),
        ("ls $(rm x)", False),
        ("ls `rm x`", False),
        ("ls\nrm x", False),
        ("find . -name '*.pyc' -delete", False),
        ("find . -exec rm {} +", False),
        ("sort -o out.txt in.txt", False),
        ("git branch -D main", False),
        ("git -c core.fsmonitor='rm -rf ~' status", False),
        ("git stash", False),
        ("(ls)", False),
        ("cat <<EOF", False),
        ("echo 'unbalanced", False),
        ("", False),
    ],
)
def test_read_only_shell_commands(command: str, read_only: bool) -> None:
    assert Action.shell(command).read_only is read_only


def test_actions_from_json_are_checked() -> None:
    action = Action.from_mapping(
        {"kind": "edit", "path": "a/../b.py", "worktree": "/w/", "est_cost_usd": 1, "trial": 3}
    )
    assert (action.path, action.worktree, action.relpath, action.est_cost_usd) == (
        "/w/b.py",
        "/w",
        "b.py",
        1.0,
    )
    for data, message in [
        ({"path": "x"}, "needs a kind"),
        ({"kind": "edit", "trial": "3"}, "trial must be a whole number"),
        ({"kind": "edit", "autonomy": "wild"}, "autonomy 'wild' is not one of"),
        ({"kind": "llm", "est_cost_usd": True}, "est_cost_usd must be a number"),
        ({"kind": "edit", "protected": "judge.py"}, "protected must be a list"),
    ]:
        with pytest.raises(ValueError, match=message):
            Action.from_mapping(data)


# -- `overnight policy check` --------------------------------------------------------------


def test_policy_check_prints_the_decision_and_exits_by_effect(tmp_path: Path) -> None:
    lab = governed_lab(
        tmp_path,
        {"policies/team.yaml": ISSUE_EXAMPLE},
        '[governance]\npolicies = ["policies/*.yaml"]\n',
    )
    version = Policy.from_files([lab / "policies" / "team.yaml"], root=lab).version

    result = run_cli(
        "policy",
        "check",
        '{"kind": "shell", "command": "git push --force origin main"}',
        "-C",
        str(lab),
    )
    assert result.returncode == 5, result.stderr
    out = result.stdout
    assert out.startswith("deny shell: git push --force origin main")
    assert "deny    no-force-push (policies/team.yaml): force pushes rewrite shared history" in out
    assert "deny    no-force-push (default.yaml (shipped))" in out
    assert "+0.50   git-push (default.yaml (shipped))" in out
    assert f"risk 0.50 · review at 0.5, deny at 0.85 (embedded) · policy version {version}" in out

    # the lab's protected globs are filled in
    (tmp_path / "action.json").write_text('{"kind": "edit", "path": "judge.py"}')
    result = run_cli("policy", "check", f"@{tmp_path / 'action.json'}", "-C", str(lab), "--json")
    assert result.returncode == 5
    data = json.loads(result.stdout)
    assert data["decision"] == "deny" and data["action"]["protected"] == ["judge.py"]
    assert [r["id"] for r in data["rules"]] == ["protected-files-untouchable"]
    assert data["policy_version"] == version and data["risk"] == 0.0

    review = run_cli(
        "policy", "check", '{"kind": "shell", "command": "sudo systemctl status x"}', "-C", str(lab)
    )
    assert review.returncode == 4 and review.stdout.startswith("review ")
    allow = run_cli(
        "policy",
        "check",
        '{"kind": "shell", "command": "ls", "autonomy": "curious"}',
        "-C",
        str(lab),
    )
    assert allow.returncode == 0 and allow.stdout.startswith("allow ")

    bad = run_cli("policy", "check", '{"kind": "shell", "comand": "ls"}', "-C", str(lab))
    assert bad.returncode == 2 and "unknown action field(s) comand" in bad.stderr
    bad = run_cli("policy", "check", '{"kind": ', "-C", str(lab))
    assert bad.returncode == 2 and "ACTION_JSON is not valid JSON" in bad.stderr


def test_the_readme_example_loads_and_its_tests_pass(tmp_path: Path) -> None:
    root = REPO
    assert SHIPPED.relative_to(root).as_posix() == "overnight/governance/rules/default.yaml"
    readme = (root / "README.md").read_text()
    section = readme.split("## Governance: policies", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = load(tmp_path, example)
    assert [o.problem for o in policy.run_tests()] == [None] * len(policy.tests)
    alone = load(tmp_path, example, defaults=False)
    assert alone.decide(Action.shell("wget https://x.example/d.tar.gz")).risk == 0.3


def test_decisions_from_many_threads_agree_with_one() -> None:
    """The command center decides for every agent at once, from its server's threads."""
    rng = random.Random(3)
    pool = [t.action for t in SHIPPED_POLICY.tests] * 20
    rng.shuffle(pool)
    alone = [SHIPPED_POLICY.decide(a).effect for a in pool]
    with ThreadPoolExecutor(8) as executor:
        together = list(executor.map(lambda a: SHIPPED_POLICY.decide(a).effect, pool))
    assert together == alone
    assert set(alone) == {Effect.allow, Effect.review, Effect.deny}
