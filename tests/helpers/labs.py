"""Throwaway labs: committed git repositories holding a tiny, fast experiment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TOY_SCRIPT = """\
import os, sys
X = 0.5
Y = 5
print("training...")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""

TOY_CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"
grace = "5s"
parallel = {parallel}
{lab_extra}

[[knobs]]
name = "X"
file = "exp.py"
low = -5
high = 5

[[knobs]]
name = "Y"
file = "exp.py"
low = -5
high = 5
int = true

[[agents]]
name = "t"
count = {agents}
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_lab(
    root: Path,
    *,
    script: str = TOY_SCRIPT,
    parallel: int = 1,
    agents: int = 1,
    lab_extra: str = "",
    config: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """A committed git repository holding a tiny, fast lab."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    (root / "exp.py").write_text(script)
    (root / "judge.py").write_text("# the protected evaluator\n")
    (root / "program.md").write_text("# toy\nMake score small.\n")
    body = config or TOY_CONFIG.format(
        python=sys.executable, parallel=parallel, agents=agents, lab_extra=lab_extra
    )
    (root / "overnight.toml").write_text(textwrap.dedent(body))
    for rel, content in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "lab")
    return root
