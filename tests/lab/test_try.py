"""`overnight try`: how an external agent submits work from its worktree, through the real CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers.labs import git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli


def try_in(worktree: Path, description: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OVERNIGHT, "try", description],
        cwd=worktree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def started_lab(tmp_path: Path) -> tuple[Path, Path, dict[str, object]]:
    """A lab whose run has measured its baseline (score 22.25) and one optuna trial."""
    lab = make_lab(tmp_path / "lab")
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode == 0, done.stderr
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    (agent,) = status["agents"]
    worktree = lab / ".overnight" / "worktrees" / status["run"] / agent["name"]
    assert worktree.is_dir()
    return lab, worktree, status


def test_try_keeps_a_better_change_and_resets_a_worse_one(tmp_path: Path) -> None:
    lab, worktree, status = started_lab(tmp_path)
    branch = f"overnight/{status['run']}/{status['agents'][0]['name']}"  # type: ignore[index]

    exp = worktree / "exp.py"
    exp.write_text(
        exp.read_text().replace("X = ", "X = 3  # was ", 1).replace("Y = ", "Y = 1  # ", 1)
    )
    kept = try_in(worktree / ".", "X and Y at the optimum")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "KEPT: score 0" in kept.stdout
    head = git(worktree, "rev-parse", "HEAD").strip()
    assert git(lab, "rev-parse", branch).strip() == head  # the ratchet advanced

    exp.write_text(exp.read_text().replace("X = 3", "X = 9", 1))
    worse = try_in(worktree, "X far off")
    assert worse.returncode == 0, worse.stdout + worse.stderr
    assert "DISCARDED: score 36" in worse.stdout
    assert "X = 3" in exp.read_text()  # the worktree is back at the best commit
    assert git(worktree, "status", "--porcelain").strip() == ""

    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X and Y at the optimum" in ledger and "X far off" in ledger


def test_try_rejects_a_protected_file_changed_by_a_shell_redirect(tmp_path: Path) -> None:
    lab, worktree, _ = started_lab(tmp_path)
    subprocess.run("echo 'score = 0' >> judge.py", shell=True, cwd=worktree, check=True)
    rejected = try_in(worktree, "tweak the judge")
    assert rejected.returncode == 1
    assert "REJECTED: integrity:" in rejected.stdout and "judge.py" in rejected.stdout
    assert (worktree / "judge.py").read_text() == "# the protected evaluator\n"
    assert "tweak the judge" in run_cli("ledger", str(lab), "--tsv").stdout


def test_try_explains_what_is_wrong(tmp_path: Path) -> None:
    lab, worktree, _ = started_lab(tmp_path)
    nothing = try_in(worktree, "no change at all")
    assert nothing.returncode == 2
    assert "nothing to try" in nothing.stderr
    outside = try_in(lab, "from the main checkout")
    assert outside.returncode == 2
    assert "not an agent's worktree" in outside.stderr and "fix:" in outside.stderr
