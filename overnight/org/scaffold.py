"""Writing org code for a user: `overnight init` drafts, `overnight example` copies.

Owns the commented templates, the guesses they are filled with, and the
shipped example labs. Knows nothing about running a lab.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from string import Template

from overnight.errors import RepoError, UserError
from overnight.org.load import CONFIG_FILE

_EVALUATOR_NAMES = ("prepare.py", "evaluate.py", "eval.py", "evaluation.py", "metric.py")
_METRIC_LINE = re.compile(r"""print\(\s*f?["']([A-Za-z_][A-Za-z0-9_]*):""")


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
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".overnight", "model.npz"),
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


def init(root: Path, *, force: bool = False) -> list[Path]:
    """Draft overnight.toml and program.md in an existing git repository."""
    root = root.resolve()
    if not (root / ".git").exists():
        raise RepoError(
            f"{root}: not the top of a git repository.\n"
            "  fix: run `git init` there first (overnight keeps every attempt as a commit), "
            "or point `overnight init` at the repository's top folder."
        )
    targets = [root / CONFIG_FILE, root / "program.md"]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        them = "it" if len(existing) == 1 else "them"
        raise UserError(
            f"{' and '.join(str(p) for p in existing)} already "
            f"{'exists' if len(existing) == 1 else 'exist'}.\n"
            f"  fix: edit {them}, or pass --force to overwrite {them}."
        )
    values = _guess(root)
    for target in targets:
        template = (resources.files("overnight") / "org" / "templates" / target.name).read_text()
        target.write_text(Template(template).safe_substitute(values), encoding="utf-8")
    return targets


def _guess(root: Path) -> dict[str, str]:
    py = sorted(p.relative_to(root).as_posix() for p in root.glob("*.py"))
    protected = [p for p in py if p in _EVALUATOR_NAMES]
    editable = [p for p in py if p not in protected]
    preferred = [p for p in editable if p in ("train.py", "main.py", "model.py")]
    editable = preferred[:1] or editable[:1] or ["train.py"]
    run = f"python {editable[0]}" if editable[0].endswith(".py") else "./run.sh"
    metric = "score"
    for path in [*editable, *protected]:
        match = _METRIC_LINE.findall((root / path).read_text(encoding="utf-8", errors="replace"))
        for name in match:
            if any(word in name for word in ("loss", "bpb", "acc", "score", "error", "val")):
                metric = name
                break
    goal = "maximize" if any(w in metric for w in ("acc", "score", "reward", "f1")) else "minimize"
    return {
        "name": re.sub(r"[^A-Za-z0-9_.-]", "-", root.name).strip("-.") or "lab",
        "editable": _quoted(editable),
        "protected": _quoted(protected),
        "first_editable": editable[0],
        "run": run,
        "metric": metric,
        "goal": goal,
        "goal_word": "low" if goal == "minimize" else "high",
        "editable_list": _bullets(editable),
        "protected_list": _bullets(protected),
    }


def _quoted(items: list[str]) -> str:
    return ", ".join(f'"{i}"' for i in items)


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- `{i}`" for i in items) or "- (nothing)"
