"""Writing org code for a user: `overnight init` drafts, `overnight example` copies.

Owns the commented templates, filling them with the guesses `overnight.org.draft`
makes, never overwriting what a user wrote, and the shipped example labs. Knows
nothing about running a lab.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from overnight.errors import RepoError, UserError
from overnight.org.draft import Draft, duration_text, survey
from overnight.org.load import CONFIG_FILE
from overnight.paths import STATE_DIR


def examples_dir() -> Path:
    return Path(str(resources.files("overnight") / "examples"))


def list_examples() -> dict[str, str]:
    """Example name -> first line of its program.md."""
    out = {}
    for path in sorted(examples_dir().iterdir()):
        if (path / CONFIG_FILE).is_file():
            first = (path / "program.md").read_text(encoding="utf-8").splitlines()[0]
            out[path.name] = first.lstrip("# ").strip()
    return out


def copy_example(name: str, dest: Path) -> Path:
    """Copy example `name` into `dest` and make it a fresh git repository with one commit."""
    examples = list_examples()
    if name not in examples:
        raise UserError(
            f"no example named {name!r}.\n  fix: pick one of: {', '.join(examples)} "
            "(`overnight example list` says what each does)."
        )
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise UserError(
            f"{dest} exists and is not empty.\n  fix: choose a directory that does not exist yet."
        )
    shutil.copytree(
        examples_dir() / name,
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", STATE_DIR, "model.npz"),
        dirs_exist_ok=True,
    )
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=overnight", "-c", "user.email=overnight@localhost",
         "commit", "-q", "-m", f"overnight example {name}"],
    ):  # fmt: skip
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@dataclass(frozen=True)
class Initialized:
    """What `overnight init` did: the files it wrote or kept, and what it found."""

    config: Path
    program: Path
    program_kept: bool
    draft: Draft


def init(root: Path, *, force: bool = False) -> Initialized:
    """Draft overnight.toml (and program.md, when there is none) in an existing git repository.

    Never overwrites the agents' instructions: a `program.md` already there (every
    autoresearch fork has one) is kept as it is. An existing overnight.toml is redrafted
    only with `force`.
    """
    root = root.resolve()
    if not (root / ".git").exists():
        raise RepoError(
            f"{root}: not the top of a git repository.\n"
            "  fix: run `git init` there first (overnight keeps every attempt as a commit), "
            "or point `overnight init` at the repository's top folder."
        )
    config, program = root / CONFIG_FILE, root / "program.md"
    if config.exists() and not force:
        raise UserError(
            f"{config} already exists.\n"
            "  fix: edit it, or pass --force to draft it again over it (program.md is never "
            "overwritten)."
        )
    draft = survey(root)
    kept = program.exists()
    values = _values(draft, kept)
    config.write_text(_fill("overnight.toml", values), encoding="utf-8")
    if not kept:
        program.write_text(_fill("program.md", values), encoding="utf-8")
    return Initialized(config, program, kept, draft)


def _fill(template: str, values: dict[str, str]) -> str:
    text = (resources.files("overnight") / "org" / "templates" / template).read_text()
    return Template(text).safe_substitute(values)


def _values(d: Draft, program_kept: bool) -> dict[str, str]:
    others = [n for n in d.printed if n != d.metric and n not in d.record]
    notes = {
        "program_note": (
            "\n# kept as you wrote it; CLI agents read overnight's rules first (a change is "
            "submitted with `overnight try`, which commits, runs, keeps or resets it)"
            if program_kept
            else ""
        ),
        "run_note": (
            f"\n# uv: the repository has {d.uv}"
            + (
                "; uv is not on PATH here: install it before `overnight run`"
                if d.uv_missing
                else ""
            )
            if d.uv
            else ""
        ),
        "budget_note": (
            f"\n# from {d.budget_from}; killed at budget + grace" if d.budget_from else ""
        ),
        "metric_note": (
            ""
            if d.metric_found
            else "\n# no `name: value` line found in the code: write the name your run prints"
        ),
        "goal_note": d.goal_why,
        "record_line": (
            f"record = [{_quoted(d.record)}]" if d.record else '# record = ["peak_vram_mb"]'
        )
        + "   # other `name: value` lines kept with each trial (ledger, report)"
        + (f"\n# (the code also prints: {', '.join(others)})" if others else ""),
        "constraint_example": (
            '"peak_vram_mb <= 70000"' if "peak_vram_mb" in d.record else '"memory_gb <= 16"'
        ),
        "gpu_note": (
            "\n# autoresearch trains on a GPU: with several, set parallel to their number and "
            "gpus_per_trial = 1"
            if d.autoresearch
            else ""
        ),
        "writable_block": (
            f"writable = [{_quoted(d.writable)}]   # uv's cache (there once you ran `uv sync`): "
            "the sandbox leaves only the worktree and these writable\n"
            "# network = false              # `uv run` needs the network only for packages not "
            "in its cache (after one `uv sync`, false works)\n"
            if d.writable
            else ""
        ),
        "knobs_block": _knobs_block(d),
    }
    return {
        "name": d.name,
        "editable": _quoted(d.editable),
        "protected": _quoted(d.protected),
        "first_editable": d.editable[0],
        "run": d.run,
        "budget": duration_text(d.budget_s),
        "grace": duration_text(d.grace_s),
        "metric": d.metric,
        "goal": d.goal,
        "goal_word": "low" if d.goal == "minimize" else "high",
        "editable_list": _bullets(d.editable),
        "protected_list": _bullets(d.protected),
        **notes,
    }


def _knobs_block(d: Draft) -> str:
    if not d.knobs:
        return (
            "#\n# [[knobs]]\n"
            '# name = "LEARNING_RATE"\n'
            f'# file = "{d.editable[0]}"\n'
            "# low = 1e-4\n# high = 1e-1\n# log = true\n"
        )
    out = [f"# Drafted from the numbers at the top of {', '.join(d.editable)}:", ""]
    for k in d.knobs:
        out.append(
            f"[[knobs]]                      # {k.name} = {k.source} (line {k.line}): {k.why}"
        )
        out.append(f'name = "{k.name}"')
        out.append(f'file = "{k.file}"')
        if k.choices:
            out.append(f"choices = [{', '.join(str(c) for c in k.choices)}]")
        else:
            out.append(f"low = {_toml_number(k.low)}")
            out.append(f"high = {_toml_number(k.high)}")
            if k.log:
                out.append("log = true")
            if k.int_:
                out.append("int = true")
        out.append("")
    if d.skipped_knobs:
        out.append("# not drafted: " + "; ".join(d.skipped_knobs))
    return "\n".join(out) + "\n"


def _toml_number(value: float | None) -> str:
    assert value is not None
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value)) if isinstance(value, int) else f"{float(value):.1f}"
    return repr(float(value))


def _quoted(items: list[str]) -> str:
    return ", ".join(f'"{i}"' for i in items)


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- `{i}`" for i in items) or "- (nothing)"
