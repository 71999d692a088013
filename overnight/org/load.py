"""Reading org code from a directory into an `Org`, with errors a person can act on.

Owns turning TOML syntax errors and pydantic validation errors into one
`ConfigError` naming the file, the field, its line, and the fix. Knows nothing
about git or the store.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from overnight.errors import ConfigError
from overnight.gateway.config import GatewayConfig
from overnight.org.config import AgentConfig, KnobConfig, LabConfig, OrgConfig

CONFIG_FILE = "overnight.toml"

_TABLE_MODELS: dict[str, type[BaseModel]] = {
    "lab": LabConfig,
    "knobs": KnobConfig,
    "agents": AgentConfig,
    "gateway": GatewayConfig,
}


@dataclass(frozen=True)
class Org:
    """Org code as loaded: where it lives, what it says, and the agents' instructions."""

    root: Path
    config: OrgConfig
    program: str

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE


def load_org(root: Path) -> Org:
    """Load and validate `overnight.toml` and the program file under `root`."""
    root = root.resolve()
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            path,
            "no overnight.toml here",
            fix=f"run `overnight init {root}` to write one, or pass the lab's directory",
        )
    config = parse_config(path.read_text(encoding="utf-8"), path)
    program_path = root / config.lab.program
    if not program_path.is_file():
        raise ConfigError(
            path,
            f"the program file {config.lab.program!r} does not exist",
            field="lab.program",
            line=line_of(path.read_text(encoding="utf-8"), ("lab", "program")),
            fix=f"write the agents' instructions to {program_path} (`overnight init` drafts one)",
        )
    return Org(root=root, config=config, program=program_path.read_text(encoding="utf-8"))


def parse_config(text: str, path: Path) -> OrgConfig:
    """Validate the text of an `overnight.toml`; `path` is only used in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_error_line(str(exc))
        raise ConfigError(
            path,
            f"not valid TOML ({exc})",
            line=line,
            fix='check quoting and brackets on that line; strings need quotes, e.g. run = "python train.py"',
        ) from None
    if "lab" not in data:
        raise ConfigError(
            path,
            "missing the [lab] table",
            field="lab",
            fix="add a [lab] table with name, editable, run and metric (`overnight init` writes a template)",
        )
    try:
        return OrgConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, data, text, path) from None


def _config_error(exc: ValidationError, data: dict[str, Any], text: str, path: Path) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    field = _dotted(loc)
    kind = err["type"]
    message = err["msg"].removeprefix("Value error, ")
    fix: str | None = None
    if kind == "extra_forbidden":
        name = str(loc[-1])
        table = _table_of(loc)
        allowed = _allowed_fields(table)
        close = difflib.get_close_matches(name, allowed, n=1)
        message = f"unknown field {name!r}"
        if close:
            fix = f"did you mean {close[0]!r}? rename it"
        else:
            fix = f"remove it; [{table}] takes: {', '.join(allowed)}" if allowed else "remove it"
    elif kind == "missing":
        message = "is required"
        fix = f"add `{loc[-1]} = ...` to [{_table_of(loc)}]"
    elif kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        fix = f"use one of {expected}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        fix = f"{loc[-1]} must be {_expected_type(kind)}"
    line = line_of(text, loc)
    return ConfigError(path, message, field=field, line=line, fix=fix)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _table_of(loc: tuple[Any, ...]) -> str:
    return str(loc[0]) if len(loc) > 1 else ""


def _allowed_fields(table: str) -> list[str]:
    model = _TABLE_MODELS.get(table) if table else OrgConfig
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _expected_type(kind: str) -> str:
    base = kind.removesuffix("_type").removesuffix("_parsing")
    return {
        "string": "a quoted string",
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "list": 'a list, e.g. ["a", "b"]',
    }.get(base, f"a {base}")


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a field: find its table header, then the key below it.

    Handles nested headers: ("gateway", "upstreams", 1, "base_url") is the
    `base_url` under the second `[[gateway.upstreams]]`.
    """
    lines = text.splitlines()
    headers: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$", line)
        if match:
            headers.append((i, match.group(1).replace(" ", "").replace('"', "")))
    # the longest run of names in `loc` that is a table header, with its index if any
    names: list[str] = []
    best: tuple[int, int] | None = None  # (header line index, position after it in loc)
    pos = 0
    while pos < len(loc) and isinstance(loc[pos], str):
        names.append(str(loc[pos]))
        pos += 1
        dotted = ".".join(names)
        starts = [i for i, name in headers if name == dotted]
        if not starts:
            continue
        index, after = 0, pos
        if after < len(loc) and isinstance(loc[after], int):
            index, after = loc[after], after + 1
        if index < len(starts):
            best = (starts[index], after)
    if best is None:
        return None
    start, after = best
    if after >= len(loc):
        return start + 1
    key = re.compile(rf"^\s*{re.escape(str(loc[after]))}\s*=")
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if key.match(lines[i]):
            return i + 1
    return start + 1
