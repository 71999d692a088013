"""The action: one schema for everything an agent may do that policy judges.

Owns the shape of an action and how each source becomes one:

| source | constructor | kind |
|---|---|---|
| a Claude Code PreToolUse hook payload | `Action.from_hook` | `shell` (Bash), `edit` (Edit, Write, MultiEdit, NotebookEdit), `read` (Read, Grep, Glob, LS, NotebookRead), `network` (WebFetch, WebSearch), `tool` (anything else, MCP tools included) |
| a shell command | `Action.shell` | `shell` |
| a file edit, or a trial's diff (one per changed path) | `Action.edit`, `edits_from_paths` | `edit` |
| an LLM request at the gateway | `Action.llm` | `llm` |
| a kept change (the ratchet advancing) | `Action.keep` | `keep` |
| JSON / YAML written by a person (`overnight policy check`, policy tests) | `Action.from_mapping` | any |

Policies see an action as the CEL map `action` (`to_cel`). Every field is always
present, unset ones at their zero value (`""`, `0`, `0.0`, `[]`, `{}`), the way a
proto3 message reads in CEL, so `action.command.matches(...)` on an edit is
simply false instead of an error. Two fields are derived: `relpath` (the path
relative to the worktree; `""` when it lies outside it, or when it is absolute
and no worktree is known) and `read_only` (see `is_read_only`).

Paths are normalized lexically when the action is built (`~` expanded, joined to
the directory the agent worked in, `..` collapsed), so `wt/../../etc/passwd` is
`/etc/passwd` to every rule. Symlinks are not resolved: the hook is a first line
of defence; the integrity guard in `overnight.lab` is the ground truth.

Standard library only. Knows nothing about policies, CEL or the store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    shell = "shell"
    edit = "edit"
    read = "read"
    network = "network"
    tool = "tool"
    llm = "llm"
    keep = "keep"


AUTONOMY_LEVELS = ("curious", "ready", "embedded")

_EDIT_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path"}
_EDIT_TOOLS["NotebookEdit"] = "notebook_path"
_READ_TOOLS = {"Read": "file_path", "NotebookRead": "notebook_path"}
_SEARCH_TOOLS = {"Grep", "Glob", "LS"}  # `path` is optional: the agent's directory
_NETWORK_TOOLS = {"WebFetch", "WebSearch"}
_SIDE_EFFECT_FREE_TOOLS = frozenset(
    {
        # Claude Code tools that change nothing on disk themselves; a subagent's own
        # tool calls go through the hook like any other
        "Task", "Agent", "TodoWrite", "AskUserQuestion", "ExitPlanMode", "EnterPlanMode",
        "ToolSearch", "LSP", "Skill", "TaskOutput", "TaskStop", "BashOutput", "KillShell",
        "KillBash",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """Something an agent is about to do, as policy sees it."""

    kind: Kind
    agent: str = ""
    tool: str = ""
    """The tool's own name (`Bash`, `Edit`, `mcp__github__create_issue`, ...)."""
    command: str = ""
    path: str = ""
    url: str = ""
    model: str = ""
    est_cost_usd: float = 0.0
    metric: float = 0.0
    """For a keep: the candidate's metric."""
    delta: float = 0.0
    """For a keep: its improvement over the agent's best, as a fraction of the best
    (positive = better, whatever the goal)."""
    worktree: str = ""
    autonomy: str = "embedded"
    trial: int = 0
    protected: tuple[str, ...] = ()
    """The lab's `protected` globs, passed along so rules can refer to them."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Everything else the source said (a tool's other arguments, ...)."""

    # -- constructors ------------------------------------------------------------

    @classmethod
    def shell(cls, command: str, **context: Any) -> Action:
        return cls(kind=Kind.shell, command=command, **_context(context, "shell"))

    @classmethod
    def edit(cls, path: str, *, cwd: str = "", **context: Any) -> Action:
        """An edit of `path` (relative to `cwd`, or else to the worktree)."""
        context = _context(context, "edit")
        path = normalize_path(path, cwd or context.get("worktree", ""))
        return cls(kind=Kind.edit, path=path, **context)

    @classmethod
    def llm(cls, model: str, est_cost_usd: float, **context: Any) -> Action:
        context = _context(context, "llm")
        return cls(kind=Kind.llm, model=model, est_cost_usd=est_cost_usd, **context)

    @classmethod
    def keep(cls, metric: float, delta: float, **context: Any) -> Action:
        return cls(kind=Kind.keep, metric=metric, delta=delta, **_context(context, "keep"))

    @classmethod
    def from_hook(
        cls,
        payload: Mapping[str, Any],
        *,
        agent: str,
        worktree: str,
        autonomy: str = "embedded",
        trial: int = 0,
        protected: Iterable[str] = (),
    ) -> Action:
        """The action of a Claude Code PreToolUse hook payload (`tool_name`, `tool_input`,
        `cwd`). `agent`, `worktree`, `autonomy` and `protected` come from the command
        center, never from the payload: the agent controls the payload."""
        name = payload.get("tool_name")
        if not isinstance(name, str) or not name:
            raise ValueError("the hook payload has no tool_name")
        tool_input = payload.get("tool_input") or {}
        if not isinstance(tool_input, Mapping):
            raise ValueError(f"tool_input of {name} is not an object")
        cwd = payload.get("cwd")
        base = cwd if isinstance(cwd, str) and os.path.isabs(cwd) else worktree
        context: dict[str, Any] = {
            "agent": agent,
            "tool": name,
            "worktree": normalize_path(worktree, ""),
            "autonomy": str(autonomy),
            "trial": trial,
            "protected": tuple(protected),
        }

        def text(key: str, default: str = "") -> str:
            value = tool_input.get(key, default)
            if value is None:
                return default
            if not isinstance(value, str):
                raise ValueError(f"{name}: tool_input.{key} is not a string")
            return value

        def rest(*used: str) -> dict[str, Any]:
            return {k: v for k, v in tool_input.items() if k not in used}

        if name == "Bash":
            return cls(kind=Kind.shell, command=text("command"), extra=rest("command"), **context)
        if name in _EDIT_TOOLS or name in _READ_TOOLS:
            key = _EDIT_TOOLS.get(name) or _READ_TOOLS[name]
            kind = Kind.edit if name in _EDIT_TOOLS else Kind.read
            path = normalize_path(text(key), base)
            return cls(kind=kind, path=path, extra=rest(key), **context)
        if name in _SEARCH_TOOLS:
            path = normalize_path(text("path") or base, base)
            return cls(kind=Kind.read, path=path, extra=rest("path"), **context)
        if name in _NETWORK_TOOLS:
            return cls(kind=Kind.network, url=text("url"), extra=rest("url"), **context)
        return cls(kind=Kind.tool, extra=dict(tool_input), **context)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Action:
        """An action written by a person (JSON for `overnight policy check`, YAML in a
        policy's tests). Unknown keys and wrong types raise `ValueError` naming the key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an action is a mapping of fields, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(
                f"unknown action field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}"
            )
        if "kind" not in data:
            raise ValueError(f"an action needs a kind ({', '.join(k.value for k in Kind)})")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _field_value(key, value)
        values = _context(values)
        if "path" in values:
            values["path"] = normalize_path(values["path"], values.get("worktree", ""))
        return cls(**values)

    # -- what policies see -------------------------------------------------------

    @property
    def relpath(self) -> str:
        if not self.path:
            return ""
        if self.worktree:
            if self.path == self.worktree:
                return "."
            prefix = self.worktree.rstrip("/") + "/"
            return self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        return "" if os.path.isabs(self.path) else self.path

    @property
    def read_only(self) -> bool:
        return is_read_only(self)

    def to_cel(self) -> dict[str, Any]:
        """The CEL map `action`: every field present, plus `relpath` and `read_only`."""
        return {
            "kind": self.kind.value,
            "agent": self.agent,
            "tool": self.tool,
            "command": self.command,
            "path": self.path,
            "relpath": self.relpath,
            "url": self.url,
            "model": self.model,
            "est_cost_usd": float(self.est_cost_usd),
            "metric": float(self.metric),
            "delta": float(self.delta),
            "worktree": self.worktree,
            "autonomy": self.autonomy,
            "trial": int(self.trial),
            "protected": list(self.protected),
            "read_only": self.read_only,
            "extra": dict(self.extra),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON form for records and `--json` output: only the fields that are set."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kind" or value == f.default or value in ((), {}):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if isinstance(out.get("extra"), Mapping):
            out["extra"] = dict(out["extra"])
        return out

    def summary(self) -> str:
        """One line for people: `shell: git push --force`, `edit: /wt/train.py`."""
        detail = {
            Kind.shell: self.command,
            Kind.edit: self.path,
            Kind.read: self.path,
            Kind.network: self.url or str(self.extra.get("query", "")),
            Kind.tool: self.tool,
            Kind.llm: f"{self.model} (~${self.est_cost_usd:.4f})",
            Kind.keep: f"metric {self.metric:g} ({self.delta:+.2%})",
        }[self.kind]
        if len(detail) > 120:
            detail = detail[:117] + "..."
        return f"{self.kind.value}: {detail}"


def edits_from_paths(paths: Iterable[str], **context: Any) -> list[Action]:
    """One `edit` action per path a trial's diff changed (paths relative to the worktree)."""
    return [Action.edit(p, **context) for p in paths]


def normalize_path(path: str, base: str) -> str:
    """`~` expanded, joined to `base` when relative, `..` and `.` collapsed (lexically)."""
    if not path:
        return ""
    if path.startswith("~"):
        path = os.path.expanduser(path)
    if not os.path.isabs(path) and base:
        path = os.path.join(base, path)
    path = os.path.normpath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _context(context: dict[str, Any], tool: str = "") -> dict[str, Any]:
    """Keyword context, normalized: `tool` defaulted, the worktree's path, `protected`."""
    if tool and "tool" not in context:
        context = {**context, "tool": tool}
    if "autonomy" in context:
        context = {**context, "autonomy": str(context["autonomy"])}  # Autonomy is a StrEnum
    if context.get("worktree"):
        context = {**context, "worktree": normalize_path(context["worktree"], "")}
    if "protected" in context:
        context = {**context, "protected": tuple(context["protected"])}
    return context


_TEXT_FIELDS = {"agent", "tool", "command", "path", "url", "model", "worktree"}
_FLOAT_FIELDS = {"est_cost_usd", "metric", "delta"}


def _field_value(key: str, value: Any) -> Any:
    if key == "kind":
        try:
            return Kind(value)
        except ValueError:
            raise ValueError(
                f"kind {value!r} is not one of {', '.join(k.value for k in Kind)}"
            ) from None
    if key == "autonomy":
        if value not in AUTONOMY_LEVELS:
            raise ValueError(f"autonomy {value!r} is not one of {', '.join(AUTONOMY_LEVELS)}")
        return str(value)
    if key in _TEXT_FIELDS:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, not {value!r}")
        return value
    if key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, not {value!r}")
        return float(value)
    if key == "trial":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"trial must be a whole number, not {value!r}")
        return value
    if key == "protected":
        if not isinstance(value, list | tuple) or not all(isinstance(g, str) for g in value):
            raise ValueError('protected must be a list of globs, e.g. ["prepare.py"]')
        return tuple(value)
    if key == "extra":
        if not isinstance(value, Mapping):
            raise ValueError("extra must be a mapping")
        return dict(value)
    raise AssertionError(key)  # every dataclass field is handled above


# -- read-only shell commands -----------------------------------------------------------

_READ_ONLY_PROGRAMS = frozenset(
    {
        "ls", "cat", "head", "tail", "wc", "grep", "egrep", "fgrep", "rg", "pwd", "echo",
        "printf", "which", "type", "whoami", "id", "uname", "stat", "du", "df", "tree",
        "diff", "cmp", "comm", "sort", "cut", "tr", "nl", "column", "basename", "dirname",
        "realpath", "readlink", "true", "false", "test", "[", "nproc", "free", "uptime",
        "ps", "md5sum", "sha1sum", "sha256sum", "hexdump", "od", "strings", "jq", "cd",
        "printenv", "find", "git",
    }
)  # fmt: skip
# arguments that make an otherwise read-only program write or run something
_FORBIDDEN_ARGS: dict[str, tuple[str, ...]] = {
    "find": ("-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fls"),
    "sort": ("-o", "--output"),
    "tree": ("-o",),
    "rg": ("--pre",),
    "git": ("-c", "--output", "--ext-diff", "--exec", "--upload-pack", "--textconv"),
}
_GIT_READ_ONLY = frozenset(
    {
        "status", "diff", "log", "show", "blame", "ls-files", "ls-tree", "rev-parse",
        "describe", "shortlog", "grep", "cat-file", "rev-list", "merge-base", "reflog",
    }
)  # fmt: skip
_GIT_LISTING = {
    "branch": {"-a", "-r", "-v", "-vv", "--list", "-l", "--show-current", "--all"},
    "tag": {"-l", "--list", "-n"},
    "remote": {"-v"},
    "stash": {"list", "show"},
}
_SEPARATORS = {";", "&&", "||", "|", "&", "|&"}
_PUNCTUATION = frozenset("();<>|&")


def is_read_only(action: Action) -> bool:
    """Whether an action cannot change anything on disk: reads, web access and LLM
    requests, the few side-effect-free agent tools, and shell commands made only of
    allow-listed programs (ls, cat, grep, git status/diff/log, ...) without output
    redirection. Conservative: anything it does not understand is a write."""
    if action.kind in (Kind.read, Kind.network, Kind.llm):
        return True
    if action.kind is Kind.tool:
        return action.tool in _SIDE_EFFECT_FREE_TOOLS
    if action.kind is Kind.shell:
        return _read_only_command(action.command)
    return False


def _read_only_command(command: str) -> bool:
    words = command.split(None, 1)
    if not words or "\n" in command or "`" in command or "$(" in command:
        return False
    if "<(" in command or ">(" in command:
        return False
    first = words[0]
    plain = "=" not in first and "'" not in first and '"' not in first
    if plain and os.path.basename(first) not in _READ_ONLY_PROGRAMS:
        return False  # the common case, decided without parsing: `python train.py ...`
    tokens: list[tuple[bool, str]] = []  # (is an operator, text)
    pos, end = 0, len(command.rstrip())
    while pos < end:
        match = _TOKEN.match(command, pos)
        if match is None:
            return False  # an unbalanced quote, or something we do not parse
        op, word = match.group("op", "word")
        tokens.append((True, op) if op else (False, _unquote(word)))
        pos = match.end()
    segment: list[str] = []
    i = 0
    while i < len(tokens):
        is_op, token = tokens[i]
        if not is_op:
            segment.append(token)
        elif token in _SEPARATORS:
            if not _read_only_segment(segment):
                return False
            segment = []
        elif token in (">", ">>", "&>", ">&"):
            # only the harmless redirections: `>/dev/null`, `2>/dev/null`, `2>&1`
            target = tokens[i + 1][1] if i + 1 < len(tokens) and not tokens[i + 1][0] else ""
            if not (target == "/dev/null" or (token == ">&" and target.isdigit())):
                return False
            if segment and segment[-1].isdigit():
                segment.pop()  # the fd number before `>`
            i += 1
        elif token == "<":
            i += 1  # reading a file
        else:
            return False  # subshells, here-docs, `>|`, anything unusual
        i += 1
    return _read_only_segment(segment)


_TOKEN = re.compile(
    r"""\s*(?:(?P<op>&&|\|\||\|&|&>|>>|>&|>\||<<<|<<|<>|[;&|<>()])"""
    r"""|(?P<word>(?:[^\s;&|<>()'"\\]+|\\.|'[^']*'|"(?:[^"\\]|\\.)*")+))"""
)
_QUOTED = re.compile(r"""'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)""")


def _unquote(word: str) -> str:
    if not any(c in word for c in "'\"\\"):
        return word
    return _QUOTED.sub(lambda m: m.group(1) or m.group(2) or m.group(3) or "", word)


def _read_only_segment(words: list[str]) -> bool:
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        words = words[1:]  # VAR=value prefixes
    if not words:
        return True
    program = os.path.basename(words[0])
    if program not in _READ_ONLY_PROGRAMS:
        return False
    args = words[1:]
    if any(_forbidden(program, a) for a in args):
        return False
    if program == "git":
        return _read_only_git(args)
    return True


def _forbidden(program: str, arg: str) -> bool:
    if not arg.startswith("-"):
        return False
    for flag in _FORBIDDEN_ARGS.get(program, ()):
        if arg.startswith(flag):
            return True
        # a cluster of short options: `sort -ro out.txt`
        if len(flag) == 2 and arg.startswith("-") and not arg.startswith("--") and flag[1] in arg:
            return True
    return False


def _read_only_git(args: list[str]) -> bool:
    while args and args[0].startswith("-"):
        # global options; `-C dir` and `--git-dir=...` just say where
        args = args[2:] if args[0] == "-C" else args[1:]
    if not args:
        return True
    sub, rest = args[0], args[1:]
    if sub in _GIT_READ_ONLY:
        return True
    listing = _GIT_LISTING.get(sub)
    if listing is None:
        return False
    if sub == "stash":
        return bool(rest) and rest[0] in listing
    return all(a in listing for a in rest)
