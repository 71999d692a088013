"""Reading org code from a directory into an `Org`, with errors a person can act on.

Owns turning TOML syntax errors and pydantic validation errors into one
`ConfigError` naming the file, the field, its line, and the fix, in the user's
words: pydantic's are mapped by error type and the field's own constraints, so
a field added to a model gets readable messages without an entry here. Knows
nothing about git or the store.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from overnight.errors import ConfigError, Invalid
from overnight.org.config import OrgConfig
from overnight.units import parse_duration, parse_size

CONFIG_FILE = "overnight.toml"


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
    data = read_toml(text, path)
    try:
        return OrgConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, OrgConfig, text, path) from None


def read_toml(text: str, path: Path | str) -> dict[str, Any]:
    """The TOML document in `text`, or a `ConfigError` pointing at the line that breaks it."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(str(exc), text, path) from None


# -- TOML syntax -------------------------------------------------------------------------------

_TOML_FIXES = {
    "Invalid value": 'strings need quotes, e.g. run = "python train.py"; lists brackets, '
    'e.g. editable = ["train.py"]',
    "Cannot overwrite a value": "a key may appear once in a table; remove one of the two",
    "Cannot declare": "a [table] may appear once; merge the two, or write [[table]] for a list",
    "Unclosed array": "close the list with ]",
    "Unclosed inline table": "close the inline table with }",
    "Unterminated string": "close the string with the quote it opened with",
    "Expected '=' after a key": 'write key = value, e.g. metric = "val_loss"',
    "Expected newline or end of document": "one key = value per line; quote strings with spaces",
}


def _toml_error(message: str, text: str, path: Path | str) -> ConfigError:
    match = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$", message)
    problem = message[: match.start()] if match else message
    line = int(match.group(1)) if match and match.group(1) else None
    if problem.startswith("Cannot overwrite a value"):
        line = line or _repeated_key_line(text)
    fix = next((fix for start, fix in _TOML_FIXES.items() if problem.startswith(start)), None)
    where = f", column {match.group(2)}" if match and match.group(2) else ""
    return ConfigError(
        path,
        f"not valid TOML: {problem[:1].lower()}{problem[1:]}{where}",
        line=line,
        fix=fix or 'check quoting and brackets on that line, e.g. run = "python train.py"',
    )


def _repeated_key_line(text: str) -> int | None:
    """The line of the first key written twice in one table (tomllib says only "at end")."""
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*\[", line):
            seen = set()
        elif key := re.match(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=", line):
            name = key.group(1).replace(" ", "")
            if name in seen:
                return number
            seen.add(name)
    return None


# -- validation errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """One pydantic error, its location stripped of union-member tags, and its field."""

    loc: tuple[str | int, ...]
    kind: str
    ctx: dict[str, Any]
    input: Any
    field: FieldInfo | None
    annotation: Any
    msg: str  # pydantic's words, for an error type nothing here knows
    union: tuple[str, ...] = ()  # the kinds of every member of a union that refused it


def config_error(
    exc: ValidationError,
    model: type[BaseModel],
    text: str,
    path: Path | str,
    prefix: tuple[str, ...] = (),
) -> ConfigError:
    """The one `ConfigError` that best explains `exc`, raised validating `model`.

    `prefix` is where the model's table sits in the file, e.g. ("gateway",).
    An unknown field is reported first: a misspelt name also makes the real one
    "missing", and the typo is the mistake to fix.
    """
    problems = _problems(exc.errors(include_url=False), model)
    problems.sort(key=lambda p: {"extra_forbidden": 0, "missing": 2}.get(p.kind, 1))
    problem = problems[0]
    loc = (*prefix, *problem.loc)
    message, fix = _describe(problem, model, loc)
    first: tuple[str | int, ...] | None = None
    error = problem.ctx.get("error")
    if isinstance(error, Invalid):
        loc = (*loc, *error.at)
        first = (*prefix, *problem.loc, *error.first) if error.first is not None else None
    line = line_of(text, loc)
    first_line = line_of(text, first) if first else None
    if first_line and first_line != line:
        message += f" (first on line {first_line})"
    return ConfigError(path, message, field=_dotted(loc) or None, line=line, fix=fix)


def _problems(errors: list[ErrorDetails], model: type[BaseModel]) -> list[_Problem]:
    out: dict[tuple[str | int, ...], _Problem] = {}
    for err in errors:
        loc = tuple(err["loc"])
        resolved, field, annotation = _resolve(model, loc)
        # What is left past the fields is a union member's tag ("str", "int", ...): one
        # wrong value fails every member, and is one problem.
        key = loc[:resolved] if err["type"] != "extra_forbidden" else loc
        tagged = len(key) < len(loc)
        if key in out:
            if tagged:
                out[key] = _replace_union(out[key], err["type"])
            continue
        out[key] = _Problem(
            loc=key,
            kind=err["type"],
            ctx=dict(err.get("ctx", {})),
            input=err.get("input"),
            field=field,
            annotation=annotation,
            msg=err["msg"],
            union=(err["type"],) if tagged else (),
        )
    return list(out.values())


def _replace_union(problem: _Problem, kind: str) -> _Problem:
    return _Problem(
        problem.loc, "union", {}, problem.input, problem.field, problem.annotation,
        problem.msg, (*problem.union, kind),
    )  # fmt: skip


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[int, FieldInfo | None, Any]:
    """How many parts of `loc` name fields or items, the last field on the way, and the
    type where the walk stopped."""
    current: Any = model
    field: FieldInfo | None = None
    for i, part in enumerate(loc):
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str):
                return i, field, current
            found = _field_named(current, part)
            if found is None:
                return i, field, current
            field, current = found, found.annotation
        elif get_origin(current) in (list, tuple, set) and isinstance(part, int):
            current = get_args(current)[0] if get_args(current) else Any
        elif get_origin(current) is dict and isinstance(part, str):
            current = get_args(current)[1] if get_args(current) else Any
        else:
            return i, field, current
    return len(loc), field, _unwrap(current)


def _unwrap(annotation: Any) -> Any:
    """`X` from `X | None` and `Annotated[X, ...]`; a real union stays as it is."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _field_named(model: type[BaseModel], name: str) -> FieldInfo | None:
    for attr, info in model.model_fields.items():
        if (info.alias or attr) == name:
            return info
    return None


def _field_names(model: Any) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [info.alias or attr for attr, info in model.model_fields.items()]
    return []


def _describe(p: _Problem, root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, str]:
    """The problem and its fix, in the words of someone editing the file."""
    name = _name(loc)
    got = _shown(p.input)
    kind = p.kind
    if kind == "extra_forbidden":
        return _unknown_field(p, root, loc)
    if kind == "missing":
        return _missing(p, loc)
    if kind == "value_error" or kind == "assertion_error":
        error = p.ctx.get("error")
        if isinstance(error, Invalid):
            return error.problem, error.fix
        text = str(error) if error is not None else kind
        return text, f"see the README's Configuration section for what {name} takes"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _out_of_range(p, name, got)
    if kind == "string_pattern_mismatch":
        return _pattern(p, name, got)
    if kind in ("string_too_short", "string_too_long", "too_short", "too_long"):
        return _length(p, name, got)
    if kind in ("literal_error", "enum"):
        return _choice(p, name, got)
    if kind == "union":
        wanted = [k.removesuffix("_type").removesuffix("_parsing") for k in p.union]
        if "float" in wanted and "int" in wanted:
            wanted.remove("int")  # every whole number is a number
        words = _or([_WANTED.get(k, k).replace("true or false", "true/false") for k in wanted])
        return f"must be {words} (got {got})", f"write {words} there"
    if kind == "finite_number":
        return (
            f"must be a finite number (got {got})",
            f"write a number, e.g. {name} = {_example(p)}",
        )
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if base in ("int", "float", "bool", "string"):
        return _scalar(p, base, loc, got)
    if base in ("list", "tuple", "set"):
        return _not_a_list(p, loc, name, got)
    if base in ("dict", "model", "model_attributes", "dataclass"):
        return _not_a_table(p, loc, got)
    return (
        f"{p.msg[:1].lower()}{p.msg[1:]} (got {got})",
        f"see the README's Configuration section for what {name} takes",
    )


_WANTED = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "a string in quotes",
    "list": "a list",
    "dict": "a table",
    "duration": "a duration",
    "size": "a size",
}


def _unknown_field(p: _Problem, root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, str]:
    name = str(p.loc[-1])
    allowed = _field_names(_resolve(root, p.loc[:-1])[2])
    tables = isinstance(p.input, dict) or (
        isinstance(p.input, list) and bool(p.input) and all(isinstance(x, dict) for x in p.input)
    )
    problem = f"unknown {'table' if tables else 'field'} {name!r}"
    # a key below the wrong header: TOML gives it to the table whose header is above it
    home = next((t for t in _tables_with(root, name) if t != p.loc[:-1]), None)
    if home is not None and not tables:
        full = (*loc[: len(loc) - len(p.loc)], *home)
        names = ".".join(_key(part) for part in full if isinstance(part, str))
        if not names:
            return problem, f"{name} belongs at the top of the file, above every [table] line"
        header = f"[[{names}]]" if isinstance(full[-1], int) else f"[{names}]"
        table = f"a {header} table" if header.startswith("[[") else header
        return problem, f"{name} belongs in {table}; move it below the {header} line"
    # a typo is close (editabel, metirc); at difflib's default 0.6, 'colour' is 'holdout'
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.7)
    if close:
        return problem, f"did you mean {close[0]!r}? rename it"
    table = _table(loc[:-1])
    return problem, f"remove it; {table} takes: {', '.join(allowed)}" if allowed else "remove it"


def _tables_with(model: type[BaseModel], name: str) -> list[tuple[Any, ...]]:
    """Where, among `model`'s tables (and theirs), a field called `name` may be written."""
    found: list[tuple[Any, ...]] = []
    pending: list[tuple[tuple[Any, ...], type[BaseModel]]] = [((), model)]
    while pending:
        loc, current = pending.pop(0)
        if name in _field_names(current):
            found.append(loc)
        for attr, info in current.model_fields.items():
            inner = _unwrap(info.annotation)
            sub: tuple[Any, ...] = (info.alias or attr,)
            if get_origin(inner) is list and get_args(inner):
                inner, sub = _unwrap(get_args(inner)[0]), (*sub, 0)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                pending.append(((*loc, *sub), inner))
    return found


def _missing(p: _Problem, loc: tuple[Any, ...]) -> tuple[str, str]:
    name = str(loc[-1])
    needed = p.annotation
    if isinstance(needed, type) and issubclass(needed, BaseModel):
        required = [
            info.alias or attr for attr, info in needed.model_fields.items() if info.is_required()
        ]
        fields = f" with {', '.join(required)}" if required else ""
        return (
            f"the {_table(loc)} table is missing",
            f"add a {_table(loc)} table{fields} (`overnight init` writes a template)",
        )
    return f"{name} is required", f"add {name} = {_example(p)} to {_table(loc[:-1])}"


def _out_of_range(p: _Problem, name: str, got: str) -> tuple[str, str]:
    bounds = _bounds(p.field)
    bounds.update({k: v for k, v in p.ctx.items() if k in ("ge", "gt", "le", "lt")})
    unit = _unit(p.field)
    shown = {k: _amount(v, unit) for k, v in bounds.items()}
    violated = next(k for k in ("ge", "gt", "le", "lt") if k in p.ctx)
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    if unit == "duration":
        words = {"ge": "at least", "gt": "longer than", "le": "at most", "lt": "shorter than"}
    problem = f"must be {words[violated]} {shown[violated]} (got {got})"
    if len(bounds) == 1:
        after = {"ge": "or more", "le": "or less"}.get(violated)
        fix = (
            f"set {name} = {shown[violated]} {after}"
            if after
            else f"set {name} to {words[violated]} {shown[violated]}, e.g. {name} = {_example(p)}"
        )
    elif set(bounds) == {"ge", "le"}:
        fix = f"set {name} to {_WANTED.get(unit, 'a value')} from {shown['ge']} to {shown['le']}"
    else:
        ends = [f"{words[k]} {shown[k]}" for k in ("ge", "gt", "le", "lt") if k in bounds]
        fix = f"set {name} to {_WANTED.get(unit, 'a value')} {' and '.join(ends)}"
    return problem, fix


def _bounds(field: FieldInfo | None) -> dict[str, Any]:
    """The field's numeric limits, wherever its type declares them."""
    if field is None:
        return {}
    found: dict[str, Any] = {}
    pending: list[Any] = [*field.metadata, field.annotation]
    while pending:
        item = pending.pop()
        if isinstance(item, FieldInfo):
            pending.extend(item.metadata)
        elif get_origin(item) is not None:
            pending.extend(get_args(item))
        else:
            for key in ("ge", "gt", "le", "lt"):
                value = getattr(item, key, None)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    found[key] = value
    return found


def _unit(field: FieldInfo | None) -> str:
    """What a number in this field counts: a duration, a size, or a plain int/float."""
    if field is None:
        return "float"
    parsers = {getattr(m, "func", None) for m in field.metadata}
    if parse_duration in parsers:
        return "duration"
    if parse_size in parsers:
        return "size"
    return "int" if _unwrap(field.annotation) is int else "float"


def _amount(value: Any, unit: str) -> str:
    if unit == "duration" and isinstance(value, int | float):
        return f'"{_seconds_text(float(value))}"' if value else "0"
    if isinstance(value, float) and value.is_integer() and unit == "int":
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seconds_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _pattern(p: _Problem, name: str, got: str) -> tuple[str, str]:
    pattern = str(p.ctx.get("pattern", ""))
    value = p.input if isinstance(p.input, str) else ""
    classes = re.fullmatch(r"\^(\[[^\]]+\])(\[[^\]]+\])\*\$", pattern)
    if not classes:
        return f"{got} is not of the form {pattern}", f"write {name} to match {pattern}"
    first, rest = classes.group(1), classes.group(2)
    rule = f"use only {_chars(rest, plural=True)} (starting with {_chars(first, plural=False)})"
    if not value:
        return f"{name} is empty", rule
    bad = next(
        (c for i, c in enumerate(value) if not re.fullmatch(first if i == 0 else rest, c)), None
    )
    a = "an" if name[:1] in "aeiou" else "a"
    if bad is not None and re.fullmatch(rest, bad) and not re.fullmatch(first, bad):
        problem = f"{got} starts with {bad!r}, which {a} {name} cannot start with"
    else:
        problem = f"{got} has a character {a} {name} cannot have: {bad!r}"
    filler = next((c for c in "_-" if re.fullmatch(rest, c)), None)
    if filler:
        suggestion = re.sub(f"(?:(?!{rest}).)+", filler, value).strip(filler)
        if suggestion and re.fullmatch(pattern, suggestion):
            rule += f", e.g. {name} = {json.dumps(suggestion)}"
    return problem, rule


def _chars(char_class: str, *, plural: bool) -> str:
    """Words for a regex character class such as `[A-Za-z0-9_.-]`."""
    body = char_class[1:-1]
    words = []
    for span, one, many in (
        ("A-Za-z", "a letter", "letters"),
        ("a-zA-Z", "a letter", "letters"),
        ("a-z", "a lowercase letter", "lowercase letters"),
        ("A-Z", "an uppercase letter", "uppercase letters"),
        ("0-9", "a digit", "digits"),
    ):
        if span in body:
            body = body.replace(span, "")
            words.append(many if plural else one)
    if not plural:
        words = [w.removeprefix("a ").removeprefix("an ") if i else w for i, w in enumerate(words)]
    marks = body.replace("\\", "")
    words.extend([" ".join(marks)] if plural and marks else marks)
    return _or(words, "and" if plural else "or")


def _length(p: _Problem, name: str, got: str) -> tuple[str, str]:
    least = p.ctx.get("min_length")
    most = p.ctx.get("max_length")
    optional = p.field is not None and not p.field.is_required()
    if p.kind.startswith("string"):
        if p.input == "":
            return f"{name} is empty", "write a value between the quotes" + (
                ", or remove the line" if optional else ""
            )
        if least is not None and p.kind.endswith("short"):
            return f"{got} is too short", f"write at least {least} characters"
        return f"{got} is too long", f"write at most {most} characters"
    count = len(p.input) if hasattr(p.input, "__len__") else 0
    if p.kind == "too_short":
        has = f"lists {count}" if count else "lists nothing"
        return (
            f"{name} {has}; it needs at least {least}",
            f"list at least {least}, e.g. {name} = {_example(p)}",
        )
    return f"{name} lists {count}; at most {most} are allowed", f"list at most {most}"


def _choice(p: _Problem, name: str, got: str) -> tuple[str, str]:
    annotation = p.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [str(m.value) for m in annotation]
    elif get_origin(annotation) is Literal:
        choices = [str(a) for a in get_args(annotation)]
    else:
        choices = re.findall(r"'([^']*)'", str(p.ctx.get("expected", "")))
    problem = f"{got} is not one of: {', '.join(choices)}"
    close = difflib.get_close_matches(str(p.input), choices, n=1, cutoff=0.5)
    if close:
        return problem, f'did you mean {close[0]!r}? write {name} = "{close[0]}"'
    return problem, f"use one of: {', '.join(choices)}"


def _scalar(p: _Problem, base: str, loc: tuple[Any, ...], got: str) -> tuple[str, str]:
    wanted = _WANTED[base]
    name = _name(loc)
    if loc and isinstance(loc[-1], int):  # an item of a list
        fix = (
            f'put every item of {name} in quotes, e.g. "{p.input}"'
            if base == "string" and isinstance(p.input, int | float)
            else f"make every item of {name} {wanted}"
        )
        return f"must be {wanted} (got {got})", fix
    if base == "bool":
        return f"must be {wanted} (got {got})", f"write {name} = true or {name} = false, no quotes"
    if base == "string":
        value = _toml(p.input) if isinstance(p.input, int | float) else "..."
        return f"must be {wanted} (got {got})", f'put it in quotes: {name} = "{value}"'
    if p.kind == "int_from_float":
        return (
            f"must be {wanted} (got {got})",
            f"set {name} to {wanted}, e.g. {name} = {_example(p)}",
        )
    return (
        f"must be {wanted} (got {got})",
        f"write {wanted} without quotes, e.g. {name} = {_example(p)}",
    )


def _not_a_list(p: _Problem, loc: tuple[Any, ...], name: str, got: str) -> tuple[str, str]:
    item = get_args(p.annotation)[0] if get_args(p.annotation) else Any
    if isinstance(item, type) and issubclass(item, BaseModel):
        header = "[[" + ".".join(_key(x) for x in loc if isinstance(x, str)) + "]]"
        return (
            f"{name} must be a list of tables (got {got})",
            f"write each one under its own {header} line (double brackets)",
        )
    if isinstance(p.input, str | int | float):
        example = json.dumps(p.input) if isinstance(p.input, str) else p.input
        return f"must be a list (got {got})", f"put it in brackets: {name} = [{example}]"
    return f"must be a list (got {got})", f"write it as {name} = {_example(p)}"


def _not_a_table(p: _Problem, loc: tuple[Any, ...], got: str) -> tuple[str, str]:
    table = _table(loc)
    if isinstance(p.input, list) and p.input and all(isinstance(x, dict) for x in p.input):
        return (
            f"{table} is written as a list ([[...]]); there is one {table}",
            f"write its header {table}, with single brackets",
        )
    return (
        f"{_name(loc)} must be a table (got {got})",
        f"write a {table} line, then its key = value lines below it",
    )


def _example(p: _Problem) -> str:
    """A value of the field's type to show in a fix: its default, a bound, or a placeholder."""
    annotation = p.annotation
    unit = _unit(p.field)
    default: Any = p.field.default if p.field is not None else PydanticUndefined
    if default not in (PydanticUndefined, None) and not isinstance(default, list | dict):
        if unit == "duration":
            return f'"{_seconds_text(float(default))}"'
        if isinstance(default, enum.Enum):
            return f'"{default.value}"'
        return _toml(default)
    bounds = _bounds(p.field)
    if unit in ("int", "float") and ("ge" in bounds or "gt" in bounds):
        low = bounds.get("ge", bounds.get("gt", 0) + 1)
        return str(int(low)) if unit == "int" else f"{float(low):g}"
    if get_origin(annotation) in (list, tuple, set):
        return '["..."]'
    if annotation is int:
        return "1"
    if annotation is float:
        return "1.0"
    if annotation is bool:
        return "true"
    return '"..."'


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    return str(value)


def _shown(value: Any) -> str:
    """A value as the message quotes it; a whole table would be noise."""
    if isinstance(value, dict):
        return "a table"
    text = repr(value) if isinstance(value, str) else _toml(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _or(words: list[str], conjunction: str = "or") -> str:
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _name(loc: tuple[Any, ...]) -> str:
    """The key the user wrote: the last name in the location."""
    names = [str(part) for part in loc if isinstance(part, str)]
    return names[-1] if names else "it"


def _table(loc: tuple[Any, ...]) -> str:
    """How the table at `loc` is written: `[lab]`, `[[knobs]]` (the 2nd), `[gateway.models]`."""
    names = [_key(part) for part in loc if isinstance(part, str)]
    if not names:
        return "the top of the file"
    if loc and isinstance(loc[-1], int):
        return f"the {_ordinal(loc[-1] + 1)} [[{'.'.join(names)}]]"
    return f"[{'.'.join(names)}]"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(part)
    return out


def _key(name: Any) -> str:
    """A key as TOML needs it written: bare if it can be, else quoted ("u/model")."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a field: find its table header, then the key below it.

    Follows nested headers and their indexes: ("gateway", "upstreams", 1,
    "credentials", 0, "env") is the `env` under the first
    `[[gateway.upstreams.credentials]]` of the second `[[gateway.upstreams]]`.
    """
    lines = text.splitlines()
    headers: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$", line)
        if match:
            headers.append((i, match.group(1).replace(" ", "").replace('"', "")))
    lo, hi = -1, len(lines)  # the lines of the table found so far (-1: above every header)
    names: list[str] = []
    used = 0  # how much of `loc` the headers account for
    pos = 0
    while pos < len(loc) and isinstance(loc[pos], str):
        names.append(loc[pos])
        pos += 1
        dotted = ".".join(names)
        starts = [i for i, name in headers if name == dotted and lo < i < hi]
        index = loc[pos] if pos < len(loc) and isinstance(loc[pos], int) else None
        if not starts or (index or 0) >= len(starts):
            continue
        lo = starts[index or 0]
        # this table runs until a header that is neither inside it nor a sub-table of it
        hi = next(
            (i for i, name in headers if lo < i < hi and not name.startswith(dotted + ".")),
            hi,
        )
        pos += index is not None
        used = pos
    if used < len(loc) and isinstance(loc[used], str):
        key = re.compile(rf"^\s*{re.escape(loc[used])}\s*=")
        for i in range(lo + 1, hi):
            if re.match(r"^\s*\[", lines[i]):
                break
            if key.match(lines[i]):
                return i + 1
    return lo + 1 if lo >= 0 else None
