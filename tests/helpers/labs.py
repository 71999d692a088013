"""Throwaway labs: committed git repositories holding a tiny, fast experiment, and the org
code (overnight.toml) they run, built from tables instead of copied TOML.

The toy lab scores `(X - 3)^2 + (Y - 1)^2` of the two knobs in exp.py, which `judge.py`
(protected) does not change; its agents, knobs and gateway are what a test says they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PYTHON = sys.executable
"""The interpreter the labs' commands run under (this venv's: numpy and overnight are here)."""

TOY_SCRIPT = """\
import os, sys
X = 0.5
Y = 5
print("training...")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""

TOY_LAB: Mapping[str, Any] = {
    "name": "toy",
    "editable": ["exp.py"],
    "protected": ["judge.py"],
    "run": f"{PYTHON} exp.py",
    "metric": "score",
    "budget": "20s",
    "grace": "5s",
    "parallel": 1,
}
"""The [lab] table of the toy lab; `lab={...}` changes fields of it (None drops one)."""

TOY_KNOBS: Sequence[Mapping[str, Any]] = (
    {"name": "X", "file": "exp.py", "low": -5, "high": 5},
    {"name": "Y", "file": "exp.py", "low": -5, "high": 5, "int": True},
)

TUNER: Mapping[str, Any] = {"name": "t", "count": 1}
"""The toy lab's one agent: optuna, trying the knobs."""


def claude_agent(**fields: Any) -> dict[str, Any]:
    """A Claude Code agent whose model is the gateway's `lab-model` (see `fake_anthropic`)."""
    return {"name": "claude", "runtime": "claude-code", "model": "lab-model", **fields}


def llm_agent(**fields: Any) -> dict[str, Any]:
    """An `llm` agent whose model is the gateway's `smart` (see `fake_openai`)."""
    return {"name": "coder", "runtime": "llm", "model": "smart", **fields}


def fake_anthropic(url: str, *, key_env: str | None = "FAKE_KEY") -> dict[str, Any]:
    """A [gateway] whose `lab-model` is the fake Anthropic provider at `url`, its key (if
    any) in the environment variable `key_env`."""
    upstream: dict[str, Any] = {"name": "fake", "protocol": "anthropic", "base_url": url}
    if key_env:
        upstream["credentials"] = [{"name": "main", "env": key_env}]
    return {"port": 0, "upstreams": [upstream], "models": {"lab-model": ["fake/claude-fake-1"]}}


def fake_openai(url: str, *, key_env: str | None = None) -> dict[str, Any]:
    """A [gateway] whose `smart` is the fake OpenAI provider at `url`, its key (if any) in
    the environment variable `key_env`."""
    upstream: dict[str, Any] = {"name": "primary", "protocol": "openai", "base_url": f"{url}/v1"}
    if key_env:
        upstream["credentials"] = [{"name": "main", "env": key_env}]
    return {"port": 0, "upstreams": [upstream], "models": {"smart": ["primary/gpt-fake-1"]}}


def lab_config(
    *,
    lab: Mapping[str, Any] | None = None,
    knobs: Sequence[Mapping[str, Any]] = TOY_KNOBS,
    agents: Sequence[Mapping[str, Any]] = (TUNER,),
    gateway: Mapping[str, Any] | None = None,
    extra: str = "",
    **tables: Mapping[str, Any],
) -> str:
    """overnight.toml of the toy lab: its [lab] with `lab`'s changes, its knobs, agents,
    gateway and other `tables` ([governance], ...), then `extra` (TOML text, for what a test
    writes by hand)."""
    fields = {**TOY_LAB, **(lab or {})}
    org: dict[str, Any] = {
        "lab": {k: v for k, v in fields.items() if v is not None},
        "knobs": list(knobs),
        "agents": list(agents),
    }
    if gateway is not None:
        org["gateway"] = gateway
    text = toml({**org, **tables})
    return f"{text}\n{extra}" if extra else text


def make_lab(
    root: Path,
    *,
    script: str = TOY_SCRIPT,
    config: str | None = None,
    files: Mapping[str, str] | None = None,
    lab: Mapping[str, Any] | None = None,
    knobs: Sequence[Mapping[str, Any]] = TOY_KNOBS,
    agents: Sequence[Mapping[str, Any]] = (TUNER,),
    gateway: Mapping[str, Any] | None = None,
    extra: str = "",
    **tables: Mapping[str, Any],
) -> Path:
    """A committed git repository holding a tiny, fast lab: exp.py (`script`), judge.py,
    program.md, `files`, and overnight.toml (`config`, else `lab_config` of the rest)."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    (root / "exp.py").write_text(script)
    (root / "judge.py").write_text("# the protected evaluator\n")
    (root / "program.md").write_text("# toy\nMake score small.\n")
    if config is None:
        config = lab_config(
            lab=lab, knobs=knobs, agents=agents, gateway=gateway, extra=extra, **tables
        )
    (root / "overnight.toml").write_text(config)
    for rel, content in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "lab")
    return root


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# -- TOML, written the way a person writes overnight.toml -------------------------------------


def toml(tables: Mapping[str, Any]) -> str:
    """TOML text of `tables`: a table per mapping, an array of tables per list of mappings,
    keys in the order given."""
    out: list[str] = []
    for key, value in tables.items():
        _table(out, [key], value)
    return "\n".join(out) + "\n"


def _table(out: list[str], path: list[str], value: Any) -> None:
    if isinstance(value, Mapping):
        _section(out, f"[{_dotted(path)}]", path, value)
    else:  # a list of mappings
        for item in value:
            _section(out, f"[[{_dotted(path)}]]", path, item)


def _section(out: list[str], header: str, path: list[str], fields: Mapping[str, Any]) -> None:
    nested = {k: v for k, v in fields.items() if _is_table(k, v)}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in fields.items() if k not in nested]
    if lines or not nested or header.startswith("[["):  # (a table of tables goes unsaid)
        out += ["", header, *lines] if out else [header, *lines]
    for key, value in nested.items():
        _table(out, [*path, key], value)


def _is_table(key: str, value: Any) -> bool:
    if isinstance(value, Mapping):
        return True
    tables = isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value)
    return bool(tables) and key not in _INLINE


_INLINE = {"credentials"}
"""Lists of tables written inline, the way overnight's docs write them."""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(_value(v) for v in value) + "]"


def _key(key: str) -> str:
    bare = key.replace("-", "").replace("_", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _dotted(path: list[str]) -> str:
    return ".".join(_key(k) for k in path)
