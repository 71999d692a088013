"""The hidden holdout: files no agent can see, and a command that judges the lab's best with them.

Owns which files are hidden (the lab's files matching `[lab] hidden`, which are
never committed: git ignores them locally, so no worktree, commit or history an
agent can read holds them), the checks that refuse a hidden file git can show
(committed now or in any reachable commit), the clean checkout a holdout runs in
(under the lab's state folder, which no agent can see, with the hidden files
copied in, and deleted afterwards) — or, on a Ray cluster, the hidden files packed to
travel with the commit to the node that runs the holdout (`pack`) — and the verdict:
does the holdout agree that a candidate improved.

Knows nothing about the store, trials or agents, nor how a process is sandboxed:
the lab hands in the walls, the environment and the budget.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from overnight.errors import ConfigError
from overnight.globs import matches
from overnight.lab.git import Git
from overnight.lab.ratchet import better
from overnight.lab.runner import RunResult, run_budgeted
from overnight.org.config import Goal
from overnight.paths import STATE_DIR

SKIPPED = (".git", STATE_DIR)
"""Folders of the lab never searched for hidden files (git's and overnight's own)."""
AGENT_REASON = "suspected overfitting or gaming: the metric improved and the hidden holdout did not"
"""What a trial rejected by the holdout says where agents read it: no holdout figure,
so the holdout cannot be climbed through the reasons of rejections."""


@dataclass(frozen=True)
class Measured:
    """One holdout run of one commit."""

    metric: float | None
    problem: str | None
    """Why there is no metric (it crashed, timed out, printed none), else None."""
    duration_s: float
    log_path: Path


def hidden_files(root: Path, globs: Sequence[str]) -> list[str]:
    """The lab's files (relative paths) that `globs` hide, as they are on disk now.

    Only the folders the globs can reach are walked (`holdout/**` walks `holdout/`): the
    lab may hold far more files than it hides, and this is asked before every trial."""
    found: set[str] = set()
    for glob in globs:
        fixed = []
        for part in glob.removeprefix("./").split("/"):
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        start = root.joinpath(*fixed)
        if start.is_file():
            found.add(start.relative_to(root).as_posix())
            continue
        for top, dirs, files in os.walk(start):
            if Path(top) == root:
                dirs[:] = [d for d in dirs if d not in SKIPPED]
            for name in files:
                rel = (Path(top) / name).relative_to(root).as_posix()
                if matches(rel, [glob]):
                    found.add(rel)
    return sorted(found)


def paths_to_hide(root: Path, globs: Sequence[str]) -> tuple[Path, ...]:
    """What a sandbox makes absent so the hidden files cannot be read from the lab's own
    checkout: a folder a glob names whole (`holdout/**`, `holdout/`, `holdout`), so files
    added to it later are hidden too, and every other hidden file one by one."""
    folders = []
    for glob in globs:
        name = glob.removesuffix("/**").rstrip("/")
        if not any(c in name for c in "*?[") and (root / name).is_dir():
            folders.append(root / name)
    files = [
        root / rel
        for rel in hidden_files(root, globs)
        if not any((root / rel).is_relative_to(f) for f in folders)
    ]
    return tuple([*folders, *files])


def refuse_exposed(
    git: Git, root: Path, globs: Sequence[str], config_path: Path, line: int | None
) -> None:
    """Raise a ConfigError when a hidden glob finds nothing to hide, or when git can show
    an agent a hidden file: committed at HEAD, or held by any commit a ref or reflog
    reaches (agents' worktrees share the lab's history: `git show <commit>:<path>`)."""
    head = git.tracked_files("HEAD")
    on_disk = hidden_files(root, globs)
    for i, glob in enumerate(globs):
        committed = sorted(p for p in head if matches(p, [glob]))
        if committed:
            shown = " ".join(committed[:5]) + (" ..." if len(committed) > 5 else "")
            raise ConfigError(
                config_path,
                f"{glob!r} hides {', '.join(committed[:5])}, which {'is' if len(committed) == 1 else 'are'} "
                "committed: every agent's worktree would hold it, and `git show` would too",
                field=f"lab.hidden[{i}]",
                line=line,
                fix=f"stop tracking it and keep it out of git: git rm --cached {shown} && "
                f"echo '/{glob}' >> .gitignore && git add .gitignore && git commit -m 'hide the "
                "holdout' (the commits that held it still show it: then hide new data, or rewrite "
                "that history)",
            )
    history = git.ever_committed()
    for i, glob in enumerate(globs):
        held = sorted(p for p in history if matches(p, [glob]))
        if held:
            raise ConfigError(
                config_path,
                f"{glob!r} hides {held[0]}, which commit {history[held[0]]} holds: agents share "
                f"the repository's history and can read it with `git show {history[held[0]]}:"
                f"{held[0]}`",
                field=f"lab.hidden[{i}]",
                line=line,
                fix="hide data no commit ever held (a new holdout set), or remove it from the "
                f"history: git filter-repo --invert-paths --path {held[0]}, then "
                "git reflog expire --expire=now --all && git gc --prune=now",
            )
    for i, glob in enumerate(globs):
        if not any(matches(p, [glob]) for p in on_disk):
            raise ConfigError(
                config_path,
                f"{glob!r} matches no file in {root}",
                field=f"lab.hidden[{i}]",
                line=line,
                fix="check the spelling (globs are relative to overnight.toml); hidden files "
                "stay uncommitted, in the lab's own folder",
            )


def ignore_hidden(git: Git, globs: Sequence[str]) -> None:
    """Have git ignore the hidden files (locally, in .git/info/exclude), so `git add -A`
    in the lab never commits them where agents could read them."""
    for glob in globs:
        git.exclude("/" + glob.removeprefix("./"))


def divergence(
    metric_name: str,
    before: float | None,
    after: float,
    holdout_name: str,
    reference: float | None,
    measured: Measured,
    goal: Goal,
) -> str | None:
    """Why a keep looks suspect, for a person (None when the holdout agrees): the metric
    went from `before` to `after`, and the holdout from `reference` (the lab's best's) to
    what `measured` says."""
    moved = f"{metric_name} improved {_num(before)} -> {_num(after)}"
    if measured.metric is None:
        return f"{moved}, and the hidden holdout could not be measured ({measured.problem})"
    if reference is None or better(measured.metric, reference, goal):
        return None
    same = measured.metric == reference
    return (
        f"{moved}, and the hidden holdout {holdout_name} "
        + ("did not move" if same else "got worse")
        + f" ({_num(reference)} -> {_num(measured.metric)}): suspected overfitting or gaming"
    )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


class Holdout:
    """Runs `[lab] holdout` on commits of one lab, one clean checkout at a time each."""

    def __init__(
        self, root: Path, git: Git, command: str, metric: str, hidden: Sequence[str], where: Path
    ) -> None:
        self.root = root
        self.git = git
        self.command = command
        self.metric = metric
        self.hidden = list(hidden)
        self.where = where
        """Where checkouts are made: inside the lab's state folder, absent for agents."""

    def measure(
        self,
        commit: str,
        name: str,
        *,
        log_path: Path,
        env: Mapping[str, str],
        wrap: Callable[[Path], list[str]],
        timeout_s: float,
        max_log: int,
        stop: threading.Event,
    ) -> Measured:
        """Check `commit` out clean as `name`, restore the hidden files, run the holdout in
        `wrap(checkout)`, and delete the checkout, whatever happened."""
        checkout = self.where / name
        self.git.remove_worktree(checkout)  # a leftover of a run that died
        checkout.parent.mkdir(parents=True, exist_ok=True)
        self.git.add_worktree(checkout, commit)
        try:
            files = hidden_files(self.root, self.hidden)
            if not files:
                return Measured(None, f"no hidden file left in {self.root}", 0.0, log_path)
            for rel in files:
                (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / rel, checkout / rel)
            result = run_budgeted(
                self.command, cwd=checkout, log_path=log_path, timeout_s=timeout_s,
                metric=self.metric, env=env, wrap=wrap(checkout), max_log=max_log, stop=stop,
            )  # fmt: skip
        finally:
            self.git.remove_worktree(checkout)
        return self.verdict(result, stop.is_set(), timeout_s, log_path)

    def verdict(
        self, result: RunResult, stopped: bool, timeout_s: float, log_path: Path
    ) -> Measured:
        """What a finished holdout run (here or on a cluster's node) says."""
        problem = None
        if stopped:
            problem = "stopped while running"
        elif result.timed_out:
            problem = f"killed after {timeout_s:.0f}s (budget + grace)"
        elif result.exit_code != 0:
            problem = f"exited with code {result.exit_code}"
        elif result.metric is None:
            problem = f"no `{self.metric}: <number>` line in its output"
        elif not math.isfinite(result.metric):
            problem = f"{self.metric} is {result.metric}"
        metric = None if problem else result.metric
        return Measured(metric, problem, result.duration_s, log_path)

    def pack(self) -> bytes | None:
        """The hidden files as a tar, to be unpacked over a clean checkout of the commit on
        a cluster's node (for the holdout run only); None when none is left."""
        files = hidden_files(self.root, self.hidden)
        if not files:
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for rel in files:
                tar.add(self.root / rel, arcname=rel, recursive=False)
        return buffer.getvalue()

    def sweep(self) -> None:
        """Delete every checkout a run that died left behind."""
        if self.where.is_dir():
            for leftover in sorted(self.where.iterdir()):
                self.git.remove_worktree(leftover)
