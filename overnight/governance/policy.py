"""Policies as code: YAML files of CEL rules, risk signals and tests, loaded once, failing closed.

A policy file:

```yaml
rules:                       # effect when `when` holds
  - id: no-force-push
    when: 'action.kind == "shell" && action.command.matches("git\\\\s+push\\\\b.*--force")'
    effect: deny             # allow | review | deny
    reason: force pushes rewrite shared history
signals:                     # weighted risk
  - id: git-push
    when: 'action.kind == "shell" && action.command.matches(r"\\bgit\\s+push\\b")'
    weight: 0.5              # -1 .. 1; negative weights lower the risk
    reason: agents have no reason to push   # optional
tests:                       # run by `overnight policy test`
  - action: {kind: shell, command: "git push --force origin main", agent: a1}
    expect: deny
    rules: [no-force-push]   # optional: these rules or signals must match too
```

`when` is CEL over the map `action` (fields in `overnight.governance.action`;
the CEL dialect in `overnight.governance.expressions`). Ids are unique within a
file; two files may use the same id (every hit names its file), so a lab's own
`no-force-push` sits beside the shipped one instead of replacing it: to change a
shipped rule, set `defaults = false` and copy the shipped file. Unknown keys
anywhere, a bad effect, an id used twice in a file, CEL that does not compile, a regex RE2 rejects, or
a condition that errors or is not a bool on an action with nothing but its kind
set: each stops the load with a `ConfigError` naming the file, line, rule id and
CEL's own message. `overnight run` loads the lab's policy before anything
starts, so a broken policy never runs.

Deciding (`Policy.decide`):
1. every rule and signal is evaluated on the action (batched: one CEL evaluation
   per 64 of them); a rule or signal whose evaluation errors on this action fails
   closed: it counts as a deny whose reason names it and the error;
2. effects combine by precedence, deny > review > allow: an `allow` rule never
   loosens anything, it only documents intent;
3. the risk score (`overnight.governance.risk`) is the clamped sum of the weights
   of the signals that hold, mapped through the thresholds for the agent's
   autonomy level, which also adds its own effect (curious: no writes; ready:
   every keep reviewed);
4. the final effect is the strictest of all of these; the decision carries every
   hit with its reason, the risk, the thresholds, the policy version and how long
   deciding took.

The policy version is the sha256 of every loaded file's name and bytes, in load
order (the shipped defaults first, then the lab's files in glob order), and of
the thresholds: any change that can change a decision changes the version.

Knows nothing about the CLI, the store, approvals or how actions arrive.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from overnight.errors import ConfigError
from overnight.governance.action import Action, Kind
from overnight.governance.decision import Decision, Effect, Hit, strictest
from overnight.governance.expressions import (
    Activation,
    Batch,
    CompileError,
    EvalError,
    Program,
    compile_expression,
    literal_patterns,
    regex_problem,
)
from overnight.governance.risk import Thresholds, autonomy_hits, risk_hit, score

if TYPE_CHECKING:
    from overnight.org.config import GovernanceConfig

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster
SHIPPED = Path(__file__).resolve().parent / "rules" / "default.yaml"
SHIPPED_NAME = "default.yaml (shipped)"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_KEYS = ("rules", "signals", "tests")
_RULE_KEYS = ("id", "when", "effect", "reason")
_SIGNAL_KEYS = ("id", "when", "weight", "reason")
_TEST_KEYS = ("action", "expect", "rules")
_FIELDS = tuple(Action(kind=Kind.tool).to_cel())
_CEL_FIX = (
    "check the CEL; the action's fields are action.kind, agent, tool, command, path, "
    "relpath, url, model, est_cost_usd, metric, delta, worktree, autonomy, trial, "
    "protected, read_only and extra (see README, Governance)"
)


@dataclass(frozen=True)
class Rule:
    id: str
    when: str
    effect: Effect
    reason: str
    source: str
    """The file it came from, as people see it (relative to the lab)."""
    line: int | None
    when_line: int | None


@dataclass(frozen=True)
class Signal:
    id: str
    when: str
    weight: float
    reason: str
    source: str
    line: int | None
    when_line: int | None


@dataclass(frozen=True)
class PolicyTest:
    action: Action
    expect: Effect
    rules: tuple[str, ...]
    source: str
    index: int
    line: int | None


@dataclass(frozen=True)
class TestOutcome:
    """One policy test run: `problem` is None when it passed."""

    test: PolicyTest
    decision: Decision
    problem: str | None

    def describe(self) -> str:
        t = self.test
        where = f"{t.source}" + (f":{t.line}" if t.line else "") + f" tests[{t.index}]"
        matched = ", ".join([*self.decision.rule_ids, *(h.id for h in self.decision.signals)])
        return (
            f"{where} ({t.action.summary()}): {self.problem}"
            f" (matched: {matched or 'nothing'}; risk {self.decision.risk:.2f})"
        )


class Policy:
    """Every loaded rule, signal and test, compiled; `decide` judges one action."""

    def __init__(
        self,
        rules: Sequence[Rule],
        signals: Sequence[Signal],
        tests: Sequence[PolicyTest],
        programs: Sequence[Program],
        sources: Sequence[str],
        version: str,
        thresholds: Thresholds,
    ) -> None:
        self.rules = tuple(rules)
        self.signals = tuple(signals)
        self.tests = tuple(tests)
        self.sources = tuple(sources)
        self.version = version
        self.thresholds = thresholds
        self._batch = Batch(programs)

    # -- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, root: Path, config: GovernanceConfig) -> Policy:
        """The policy of the lab at `root`, as its `[governance]` table says."""
        from overnight.org.load import CONFIG_FILE, line_of

        root = root.resolve()
        config_path = root / CONFIG_FILE
        paths: list[Path] = []
        for i, pattern in enumerate(config.policies):
            problem = None
            if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                problem = f"{pattern!r} is not a glob inside the lab"
            else:
                found = sorted(p for p in root.glob(pattern) if p.is_file())
                if not found:
                    problem = f"{pattern!r} matches no file"
                paths.extend(p for p in found if p not in paths)
            if problem:
                text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
                raise ConfigError(
                    config_path,
                    problem,
                    field=f"governance.policies[{i}]",
                    line=line_of(text, ("governance", "policies")),
                    fix='list policy files relative to overnight.toml, e.g. "policies/*.yaml"',
                )
        thresholds = Thresholds(config.review_at, config.deny_at)
        return cls.from_files(paths, thresholds=thresholds, defaults=config.defaults, root=root)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[Path],
        *,
        thresholds: Thresholds | None = None,
        defaults: bool = True,
        root: Path | None = None,
    ) -> Policy:
        """Load, check and compile policy files (the shipped defaults first, if asked)."""
        thresholds = thresholds or Thresholds()
        files = ([SHIPPED] if defaults else []) + [Path(p).resolve() for p in paths]
        digest = hashlib.sha256()
        parsed: list[_File] = []
        for path in files:
            name = _display(path, root)
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise ConfigError(path, f"cannot read it ({exc.strerror})") from None
            digest.update(name.encode() + b"\0" + raw + b"\0")
            parsed.append(_parse(path, name, raw))
        digest.update(f"review_at={thresholds.review_at:g};deny_at={thresholds.deny_at:g}".encode())

        seen: set[str] = set()
        for f in parsed:
            lines: dict[str, int | None] = {}
            for kind, items in f.groups():
                for i, item in enumerate(items):
                    if item.id in lines:
                        where = f" (line {lines[item.id]})" if lines[item.id] else ""
                        raise ConfigError(
                            f.path,
                            f"id {item.id!r} is already used in this file{where}",
                            field=f"{kind}[{i}].id",
                            line=item.line,
                            fix="give every rule and signal of a file its own id",
                        )
                    lines[item.id] = item.line
            seen.update(lines)
        for f in parsed:
            for t in f.tests:
                unknown = [r for r in t.rules if r not in seen]
                if unknown:
                    raise ConfigError(
                        f.path,
                        f"test expects rule(s) {', '.join(map(repr, unknown))}, which no "
                        "loaded file defines",
                        field=f"tests[{t.index}].rules",
                        line=t.line,
                        fix=_suggest(unknown[0], list(seen)) or "check the ids",
                    )

        programs: list[Program] = []
        checks: list[tuple[_File, str, int, Rule | Signal, Program]] = []
        for f in parsed:
            for kind, items in f.groups():
                for i, item in enumerate(items):
                    program = _compile(f, kind, i, item)
                    programs.append(program)
                    checks.append((f, kind, i, item, program))
        # rules first, then signals, in the order `decide` reads the batch's results
        order = [c for c in checks if c[1] == "rules"] + [c for c in checks if c[1] == "signals"]
        _probe(order)
        rules = [c[3] for c in order if isinstance(c[3], Rule)]
        signals = [c[3] for c in order if isinstance(c[3], Signal)]
        tests = [t for f in parsed for t in f.tests]
        return cls(
            rules,
            signals,
            tests,
            [c[4] for c in order],
            [f.name for f in parsed],
            digest.hexdigest(),
            thresholds,
        )

    # -- deciding ----------------------------------------------------------------

    def decide(self, action: Action) -> Decision:
        """Judge one action. Never raises for anything the action contains."""
        started = time.perf_counter_ns()
        values = self._batch.evaluate(Activation(action.to_cel()))
        hits: list[Hit] = []
        signals: list[Hit] = []
        n = len(self.rules)
        for rule, value in zip(self.rules, values[:n], strict=True):
            if value is True:
                hits.append(Hit(rule.id, rule.effect, rule.reason, rule.source))
            elif value is not False:
                hits.append(_failed(rule, value))
        for signal, value in zip(self.signals, values[n:], strict=True):
            if value is True:
                signals.append(Hit(signal.id, None, signal.reason, signal.source, signal.weight))
            elif value is not False:
                hits.append(_failed(signal, value))
        hits.extend(autonomy_hits(action))
        thresholds = self.thresholds.for_autonomy(action.autonomy)
        risk = score(h.weight for h in signals)
        escalation = risk_hit(risk, thresholds)
        if escalation is not None:
            hits.append(escalation)
        effect = strictest(h.effect for h in hits if h.effect is not None)
        return Decision(
            effect=effect,
            rules=tuple(hits),
            signals=tuple(signals),
            risk=risk,
            review_at=thresholds.review_at,
            deny_at=thresholds.deny_at,
            autonomy=action.autonomy,
            policy_version=self.version,
            latency_us=(time.perf_counter_ns() - started) / 1000,
        )

    def run_tests(self) -> list[TestOutcome]:
        """Every loaded file's tests, each against the whole policy."""
        out: list[TestOutcome] = []
        for test in self.tests:
            decision = self.decide(test.action)
            problem = None
            matched = {*decision.rule_ids, *(h.id for h in decision.signals)}
            missing = [r for r in test.rules if r not in matched]
            if decision.effect is not test.expect:
                by = f" (by {', '.join(test.rules)})" if test.rules else ""
                problem = f"expected {test.expect.value}{by}, got {decision.effect.value}"
            elif missing:
                problem = f"expected {', '.join(missing)} to match"
            out.append(TestOutcome(test, decision, problem))
        return out


# -- parsing -------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    name: str
    rules: list[Rule]
    signals: list[Signal]
    tests: list[PolicyTest]

    def groups(self) -> list[tuple[str, Sequence[Rule | Signal]]]:
        return [("rules", self.rules), ("signals", self.signals)]


def _display(path: Path, root: Path | None) -> str:
    if path == SHIPPED:
        return SHIPPED_NAME
    if root is not None:
        try:
            return path.relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _parse(path: Path, name: str, raw: bytes) -> _File:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            path,
            f"not valid YAML ({getattr(exc, 'problem', None) or exc})",
            line=mark.line + 1 if mark else None,
            fix="check the indentation and quoting on that line; quote CEL in single quotes",
        ) from None
    finally:
        loader.dispose()
    if node is not None:
        _no_duplicate_keys(path, node)
    if isinstance(data, dict):
        _known_keys(path, node, (), data, _FILE_KEYS, "a policy file")
    if not isinstance(data, dict) or not any(k in data for k in _FILE_KEYS):
        raise ConfigError(
            path,
            "is not a policy file",
            fix="a policy file is a mapping with `rules:`, `signals:` and/or `tests:` "
            "(see README, Governance)",
        )
    out = _File(path, name, [], [], [])
    for i, item in enumerate(_list(path, node, data, "rules")):
        where = ("rules", i)
        _known_keys(path, node, where, item, _RULE_KEYS, "a rule")
        rule_id = _id(path, node, where, item)
        effect = _effect(path, node, (*where, "effect"), item.get("effect"), f"rule {rule_id!r}")
        out.rules.append(
            Rule(
                rule_id,
                _text(path, node, where, item, "when", rule_id),
                effect,
                _text(path, node, where, item, "reason", rule_id),
                name,
                _line(node, where),
                _line(node, (*where, "when")),
            )
        )
    for i, item in enumerate(_list(path, node, data, "signals")):
        where = ("signals", i)
        _known_keys(path, node, where, item, _SIGNAL_KEYS, "a signal")
        signal_id = _id(path, node, where, item)
        weight = item.get("weight")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or not -1 <= weight <= 1
        ):
            raise ConfigError(
                path,
                f"signal {signal_id!r}: weight {weight!r} is not a number from -1 to 1",
                field=f"signals[{i}].weight",
                line=_line(node, (*where, "weight")) or _line(node, where),
                fix="weight: 0.3 (the signals that hold are summed into a risk from 0 to 1)",
            )
        reason = item.get("reason", signal_id)
        if not isinstance(reason, str) or not reason.strip():
            reason = _text(path, node, where, item, "reason", signal_id)
        out.signals.append(
            Signal(
                signal_id,
                _text(path, node, where, item, "when", signal_id),
                float(weight),
                reason,
                name,
                _line(node, where),
                _line(node, (*where, "when")),
            )
        )
    for i, item in enumerate(_list(path, node, data, "tests")):
        where = ("tests", i)
        _known_keys(path, node, where, item, _TEST_KEYS, "a test")
        line = _line(node, where)
        if "action" not in item:
            raise ConfigError(
                path, "a test needs an action", field=f"tests[{i}].action", line=line,
                fix="action: {kind: shell, command: \"...\"}",
            )  # fmt: skip
        try:
            action = Action.from_mapping(item["action"])
        except ValueError as exc:
            raise ConfigError(
                path,
                str(exc),
                field=f"tests[{i}].action",
                line=_line(node, (*where, "action")) or line,
                fix="an action is a mapping such as {kind: edit, path: train.py}",
            ) from None
        expect = _effect(path, node, (*where, "expect"), item.get("expect"), f"tests[{i}]")
        rules = item.get("rules", [])
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise ConfigError(
                path,
                "rules must be a list of rule or signal ids",
                field=f"tests[{i}].rules",
                line=_line(node, (*where, "rules")) or line,
                fix="rules: [no-force-push]",
            )
        out.tests.append(PolicyTest(action, expect, tuple(rules), name, i, line))
    return out


def _list(path: Path, node: Any, data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(
            path,
            f"{key} must be a list of mappings (each item starting with `- `)",
            field=key,
            line=_line(node, (key,)),
        )
    return items


def _known_keys(
    path: Path,
    node: Any,
    where: tuple[Any, ...],
    item: Mapping[str, Any],
    allowed: Sequence[str],
    what: str,
) -> None:
    for key in item:
        if key not in allowed:
            close = _suggest(str(key), allowed)
            raise ConfigError(
                path,
                f"unknown key {key!r} in {what}",
                field=_dotted((*where, key)),
                line=_line(node, (*where, key)) or _line(node, where),
                fix=close or f"remove it; {what} takes: {', '.join(allowed)}",
            )


def _id(path: Path, node: Any, where: tuple[Any, ...], item: Mapping[str, Any]) -> str:
    value = item.get("id")
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(
            path,
            "needs an id (letters, digits, `-_.`)" if value is None else f"bad id {value!r}",
            field=_dotted((*where, "id")),
            line=_line(node, (*where, "id")) or _line(node, where),
            fix="id: no-force-push",
        )
    return value


def _text(
    path: Path, node: Any, where: tuple[Any, ...], item: Mapping[str, Any], key: str, item_id: str
) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            path,
            f"{item_id!r} needs a {key} (a non-empty string)",
            field=_dotted((*where, key)),
            line=_line(node, (*where, key)) or _line(node, where),
            fix=(
                "when: 'action.kind == \"shell\" && ...' (CEL, in single quotes)"
                if key == "when"
                else "reason: what a person should know about why"
            ),
        )
    return value


def _effect(path: Path, node: Any, where: tuple[Any, ...], value: Any, what: str) -> Effect:
    try:
        return Effect(value)
    except ValueError:
        raise ConfigError(
            path,
            f"{what}: {where[-1]} {value!r} is not an effect",
            field=_dotted(where),
            line=_line(node, where) or _line(node, where[:-1]),
            fix="use allow, review or deny",
        ) from None


def _compile(f: _File, kind: str, i: int, item: Rule | Signal) -> Program:
    field = f"{kind}[{i}].when"
    line = item.when_line or item.line
    what = "rule" if kind == "rules" else "signal"
    try:
        program = compile_expression(item.when)
    except CompileError as exc:
        raise ConfigError(
            f.path,
            f"{what} {item.id!r} does not compile:\n{_indent(str(exc))}",
            field=field,
            line=line,
            fix=_CEL_FIX,
        ) from None
    for pattern in literal_patterns(item.when):
        problem = regex_problem(pattern)
        if problem:
            raise ConfigError(
                f.path,
                f"{what} {item.id!r}: {problem}",
                field=field,
                line=line,
                fix="patterns are RE2 (no lookarounds or backreferences); in YAML single "
                'quotes write a CEL raw string, r"\\bgit\\s+push", or double the backslashes',
            )
    return program


def _probe(checks: Sequence[tuple[_File, str, int, Rule | Signal, Program]]) -> None:
    """Evaluate every condition on an action of each kind with nothing else set: one
    that errors there would deny every such action at run time; say so now."""
    for kind in Kind:
        activation = Activation(Action(kind=kind).to_cel())
        for f, group, i, item, program in checks:
            value = program.evaluate(activation)
            if isinstance(value, bool):
                continue
            what = "rule" if group == "rules" else "signal"
            missing = re.search(r'Key not found in map : "([^"]+)"', getattr(value, "message", ""))
            if missing and re.search(rf"\baction\s*\.\s*{re.escape(missing[1])}\b", item.when):
                problem = f"{what} {item.id!r}: the action has no field {missing[1]!r}"
                fix = _suggest(missing[1], _FIELDS) or _CEL_FIX
            elif isinstance(value, EvalError):
                problem = (
                    f"{what} {item.id!r} fails on a {kind.value} action that sets nothing "
                    f"else: {value.message}"
                )
                fix = (
                    "guard optional values: has(action.extra.url) && ..., or test "
                    "action.kind first (a failing rule denies every action it fails on)"
                )
            else:
                problem = f"{what} {item.id!r} gives {value!r}, not true or false"
                fix = 'a condition must be true or false, e.g. action.tool == "Bash"'
            raise ConfigError(
                f.path, problem, field=f"{group}[{i}].when", line=item.when_line, fix=fix
            )


def _failed(item: Rule | Signal, value: Any) -> Hit:
    detail = value.message if isinstance(value, EvalError) else f"gave {value!r}, not a bool"
    what = "rule" if isinstance(item, Rule) else "signal"
    return Hit(
        item.id,
        Effect.deny,
        f"{what} {item.id} could not be evaluated ({detail}); failing closed",
        item.source,
    )


def _no_duplicate_keys(path: Path, node: Any) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(
                        path,
                        f"key {key.value!r} appears twice in one mapping",
                        line=key.start_mark.line + 1,
                        fix="keep one; YAML would silently use the last",
                    )
                seen.add(key.value)
            _no_duplicate_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _no_duplicate_keys(path, item)


def _line(node: Any, where: tuple[Any, ...]) -> int | None:
    """The line of the value at `where` (keys and list indexes) in a composed YAML tree."""
    for step in where:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == step]
            if not found:
                return None
            key, node = found[0]
            if step == where[-1] and not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
                return int(key.start_mark.line) + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                return None
            node = node.value[step]
        else:
            return None
    return int(node.start_mark.line) + 1 if node is not None else None


def _dotted(where: tuple[Any, ...]) -> str:
    out = ""
    for step in where:
        out += f"[{step}]" if isinstance(step, int) else ("." if out else "") + str(step)
    return out


def _suggest(name: str, options: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
