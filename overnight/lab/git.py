"""A thin, explicit wrapper over the `git` command for the lab's worktrees and refs.

Owns how overnight talks to git: which commands, with which safety flags
(no hooks, no signing, no prompts, a fixed identity so a machine without
`user.name` still works). Knows nothing about trials or the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from overnight.errors import RepoError, UserError
from overnight.paths import STATE_DIR, WORKTREES, worktree_owner

_WORKTREES = threading.Lock()
"""Held while a worktree is added, removed or pruned: git's bookkeeping of worktrees is not
safe to change from two threads at once (a prune reading a worktree another thread is
still adding fails: "failed to read .git/worktrees/NAME/commondir"), and agents make
their next changes ahead in worktrees of their own, each in its own thread."""

_ENV = {
    **os.environ,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
    "GIT_AUTHOR_NAME": "overnight",
    "GIT_AUTHOR_EMAIL": "overnight@localhost",
    "GIT_COMMITTER_NAME": "overnight",
    "GIT_COMMITTER_EMAIL": "overnight@localhost",
}
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "gc.auto=0"]


class GitError(Exception):
    """git failed where it should not have (our bug or a broken repository)."""


def blob_hash(data: bytes) -> str:
    """The id git gives a file's content, computed without starting git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Git:
    """git commands run in one working tree (the user's checkout or an agent's worktree)."""

    path: Path

    def run(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(
            ["git", *_SAFE, *args],
            cwd=self.path,
            env=_ENV,
            input=input,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)} (in {self.path}) failed: {proc.stderr.strip()}")
        return proc.stdout

    @classmethod
    def open(cls, path: Path) -> Git:
        """The repository whose top level is `path`, or a RepoError saying what to do."""
        path = path.resolve()
        if not path.is_dir():
            raise RepoError(f"{path}: no such directory")
        proc = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=path,
            env=_ENV,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RepoError(
                f"{path}: not a git repository.\n"
                f"  fix: overnight keeps every attempt as a git commit; run "
                f"`git init && git add -A && git commit -m baseline` in {path} first."
            )
        git = cls(path)
        if git.run("rev-parse", "--verify", "-q", "HEAD", check=False).strip() == "":
            raise RepoError(
                f"{path}: the repository has no commits yet.\n"
                "  fix: commit your code first (`git add -A && git commit -m baseline`)."
            )
        return git

    def head(self) -> str:
        return self.run("rev-parse", "HEAD").strip()

    def rev(self, ref: str) -> str | None:
        out = self.run("rev-parse", "--verify", "-q", ref + "^{commit}", check=False).strip()
        return out or None

    def commits(self, names: list[str]) -> list[str | None]:
        """The full commit each name (a short hash, a branch) stands for, None where it names
        no commit here (or several), in one git call however many there are."""
        if not names:
            return []
        out = self.run(
            "cat-file", "--batch-check=%(objectname) %(objecttype)",
            input="".join(f"{name}^{{commit}}\n" for name in names),
        ).splitlines()  # fmt: skip
        found: list[str | None] = []
        for line in out:
            sha, _, kind = line.rpartition(" ")
            found.append(sha if kind == "commit" else None)
        return found

    def tracked_files(self, commit: str) -> dict[str, str]:
        """Path -> blob id of every file in `commit`."""
        out = self.run("ls-tree", "-r", "-z", "--full-tree", commit)
        files = {}
        for entry in out.split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            _mode, kind, blob = meta.split()
            if kind == "blob":
                files[path] = blob
        return files

    def show(self, commit: str, path: str) -> str | None:
        """The text of `path` as it is in `commit`, or None where it does not exist."""
        proc = subprocess.run(
            ["git", *_SAFE, "show", f"{commit}:{path}"],
            cwd=self.path, env=_ENV, capture_output=True,
        )  # fmt: skip
        return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None

    def dirty(self) -> list[str]:
        """`git status --porcelain` lines of the working tree (ignored files excluded)."""
        return [line for line in self.run("status", "--porcelain").splitlines() if line]

    def common_dir(self) -> Path:
        """The repository's git directory that every worktree shares (objects, refs)."""
        found = Path(self.run("rev-parse", "--git-common-dir").strip())
        return (found if found.is_absolute() else self.path / found).resolve()

    def exclude(self, pattern: str) -> None:
        """Ignore `pattern` locally (.git/info/exclude), without touching tracked files."""
        info = Path(self.run("rev-parse", "--git-path", "info/exclude").strip())
        if not info.is_absolute():
            info = self.path / info
        info.parent.mkdir(parents=True, exist_ok=True)
        existing = info.read_text().splitlines() if info.exists() else []
        if pattern not in existing:
            with info.open("a") as fh:
                fh.write(("\n" if existing and existing[-1] else "") + pattern + "\n")

    def add_worktree(self, path: Path, commit: str) -> Git:
        """A detached worktree at `commit`; reuses a registered one at `path` if present."""
        with _WORKTREES:
            self.run("worktree", "prune")
            if not (path / ".git").exists():
                self.run("worktree", "add", "--detach", "-f", str(path), commit)
        return Git(path)

    def remove_worktree(self, path: Path, *, empty_parent: bool = False) -> None:
        """Unregister the worktree at `path` and delete it, whatever is in it; with
        `empty_parent`, its folder too once no other worktree is left in it (under the
        same lock: another thread may be adding one there)."""
        with _WORKTREES:
            self.run("worktree", "remove", "--force", "--force", str(path), check=False)
            if path.exists():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            self.run("worktree", "prune")
            if empty_parent:
                with contextlib.suppress(OSError):  # (not empty: another's is there)
                    path.parent.rmdir()

    def ever_committed(self) -> dict[str, str]:
        """Every path any commit reachable from a ref or a reflog ever held -> the short id
        of the newest such commit: what anyone with this repository can `git show`."""
        out = self.run(
            "-c", "core.quotePath=false", "log", "--all", "--reflog", "--no-renames",
            "--diff-filter=d", "--format=%x00%h", "--name-only",
        )  # fmt: skip
        found: dict[str, str] = {}
        commit = ""
        for line in out.splitlines():
            if line.startswith("\0"):
                commit = line[1:]
            elif line:
                found.setdefault(line, commit)
        return found

    def commit_all(self, message: str) -> str:
        """Commit everything in the working tree (even nothing); return the new commit."""
        self.run("add", "-A")
        self.run("commit", "-q", "--allow-empty", "--no-verify", "-m", message)
        return self.head()

    def tree_of_all(self) -> str:
        """Everything in the working tree, as a tree object (no commit made)."""
        self.run("add", "-A")
        return self.run("write-tree").strip()

    def commit_tree(self, tree: str, parent: str, message: str) -> str:
        """A commit of `tree` on `parent` (no ref or worktree moves); returns it."""
        return self.run("commit-tree", tree, "-p", parent, "-m", message).strip()

    def diff(self, old: str, new: str) -> tuple[str, list[str]]:
        """The patch from `old` to `new`, and every path it touches (both sides of a rename)."""
        patch = self.run(
            "-c", "core.quotePath=false", "diff", "--no-color", "--no-ext-diff", "--no-renames",
            old, new,
        )  # fmt: skip
        paths = []
        for line in patch.splitlines():
            if not line.startswith("diff --git "):
                continue
            rest = line[len("diff --git ") :]
            # without renames both sides name the same path: "a/P b/P"
            half = (len(rest) - 1) // 2
            if rest.startswith("a/") and rest[half + 1 : half + 3] == "b/":
                paths.append(rest[2:half])
            else:  # a quoted path (tab, quote, newline in it): ask git plainly
                out = self.run("diff", "--name-only", "-z", "--no-renames", old, new)
                return patch, [p for p in out.split("\0") if p]
        return patch, paths

    def update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        """Move `ref` to `new`, only if it still points at `old` (when given)."""
        self.run("update-ref", ref, new, *([old] if old else []))

    def reset_clean(self, commit: str) -> None:
        """Put the working tree exactly at `commit` (ignored files, like caches, stay)."""
        self.run("reset", "-q", "--hard", commit)
        self.run("clean", "-q", "-f", "-d")

    def checkout_detached(self, commit: str) -> None:
        self.run("checkout", "-q", "--detach", "-f", commit)


def worktree_of(path: Path) -> tuple[Path, str, str]:
    """(lab root, run id, agent) of the agent's worktree that `path` is in."""
    try:
        top = Path(Git(path).run("rev-parse", "--show-toplevel").strip()).resolve()
    except Exception:
        top = path.resolve()
    owner = worktree_owner(top)
    if owner is None:
        raise UserError(
            f"{path}: not an agent's worktree.\n"
            "  fix: run `overnight try` from the worktree overnight gave the agent "
            f"({STATE_DIR}/{WORKTREES}/<run>/<agent> in the lab)."
        )
    return owner
