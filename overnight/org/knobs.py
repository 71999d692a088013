"""Knobs: reading and rewriting one top-level `NAME = value` assignment in a file.

Owns the textual contract between the optimizer and the user's code: a knob is
exactly one assignment at column 0 (`LR = 0.01`, `LR: float = 0.01`,
`HIDDEN = 64  # comment`), rewritten in place with the rest of the line kept.
Part of org code, as `[[knobs]]` are: `overnight init` finds them, a lab's start
checks them, the Optuna proposer rewrites them. Knows nothing about Optuna, trials
or the store.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from overnight.errors import ConfigError
from overnight.org.config import KnobConfig

# a quoted string may hold a `#`; outside strings `#` starts the trailing comment
_STRING = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""


def _pattern(name: str) -> re.Pattern[str]:
    head = rf"^(?P<head>{re.escape(name)}[ \t]*(?::[^=\n]+)?=[ \t]*)"
    value = "(?P<value>(?:" + _STRING + r"""|[^#\n"'])*?)"""
    tail = r"(?P<tail>[ \t]*(?:#.*)?)$"
    return re.compile(head + value + tail, re.MULTILINE)


def assignment_lines(text: str, name: str) -> list[int]:
    """The line numbers of every top-level assignment to `name` a knob could rewrite."""
    return [text.count("\n", 0, m.start()) + 1 for m in _pattern(name).finditer(text)]


def literal(value: Any) -> str:
    """A value as source text (Python/TOML-compatible for numbers and strings)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    if isinstance(value, str):
        # a JSON string is also a valid Python and TOML string literal
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def read_value(text: str, name: str) -> Any:
    """The current value of knob `name` in `text` (the literal, or its source if not literal)."""
    match = _pattern(name).search(text)
    if match is None:
        raise KeyError(name)
    source = match.group("value").strip()
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def set_values(text: str, values: Mapping[str, Any]) -> str:
    for name, value in values.items():
        source = literal(value)

        def replace(m: re.Match[str], source: str = source) -> str:
            return m.group("head") + source + m.group("tail")

        text, count = _pattern(name).subn(replace, text, count=1)
        if count != 1:
            raise KeyError(name)
    return text


def apply(root: Path, knobs: Iterable[KnobConfig], values: Mapping[str, Any]) -> None:
    """Write `values` into the knobs' files under `root`."""
    by_file: dict[str, dict[str, Any]] = {}
    for knob in knobs:
        if knob.name in values:
            by_file.setdefault(knob.file, {})[knob.name] = values[knob.name]
    for rel, assignments in by_file.items():
        path = root / rel
        path.write_text(set_values(path.read_text(encoding="utf-8"), assignments), encoding="utf-8")


def current_values(root: Path, knobs: Iterable[KnobConfig]) -> dict[str, Any]:
    return {k.name: read_value((root / k.file).read_text(encoding="utf-8"), k.name) for k in knobs}


def validate(
    root: Path,
    knobs: Iterable[KnobConfig],
    config_path: Path,
    read: Callable[[str], str | None] | None = None,
) -> None:
    """Every knob's file exists and holds exactly one top-level assignment of it; files
    are read under `root`, or by `read` (a commit's, where a run starts elsewhere)."""
    for i, knob in enumerate(knobs):
        path = root / knob.file
        field = f"knobs[{i}]"
        text = (
            read(knob.file)
            if read
            else path.read_text(encoding="utf-8")
            if path.is_file()
            else None
        )
        if text is None:
            raise ConfigError(
                config_path,
                f"knob {knob.name!r}: file {knob.file!r} does not exist",
                field=f"{field}.file",
                fix="name a file of the repository, relative to overnight.toml",
            )
        found = assignment_lines(text, knob.name)
        if not found:
            raise ConfigError(
                config_path,
                f"knob {knob.name!r}: no top-level assignment `{knob.name} = ...` in {knob.file}",
                field=f"{field}.name",
                fix=f"add a line `{knob.name} = <value>` at column 0 of {knob.file}, or fix the name",
            )
        if len(found) > 1:
            raise ConfigError(
                config_path,
                f"knob {knob.name!r}: {len(found)} top-level assignments in {knob.file} "
                f"(lines {', '.join(map(str, found))})",
                field=f"{field}.name",
                fix="keep exactly one; overnight rewrites a single assignment per knob",
            )
