"""The integrity guard: the ground truth of what a trial was allowed to change.

Before a run, a candidate's diff against its parent may touch only `editable`
globs, and every `protected` file in the worktree must hash as recorded when
the run started; after the run, the protected files must still hash the same.
Whatever route an agent took (an edit tool, `cat >`, a script), a trial that
breaks either rule is rejected. Knows nothing about the store or the runner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from overnight.lab.git import blob_hash


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """gitignore-like globs: `*` and `?` stay within a path segment, `**` crosses them."""
    out, i = "", 0
    pattern = pattern.removeprefix("./")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(pattern[i])
                i += 1
            else:
                out += "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]"
                i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    # a directory pattern ("src/" or "src") covers everything below it
    return re.compile(out.rstrip("/") + "(?:/.*)?")


def matches(path: str, globs: Iterable[str]) -> bool:
    return any(_glob_regex(g).fullmatch(path) for g in globs)


def expand(globs: Iterable[str], files: Iterable[str]) -> dict[str, list[str]]:
    """Glob -> the files it matches (an empty list is a glob that matches nothing)."""
    files = list(files)
    return {g: [f for f in files if _glob_regex(g).fullmatch(f)] for g in globs}


def hash_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """Path -> git blob id of the file as it is on disk (`missing` if it is gone)."""
    out = {}
    for rel in paths:
        try:
            out[rel] = blob_hash((root / rel).read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            out[rel] = "missing"
    return out


def check_diff(
    changed: Iterable[str], editable: Iterable[str], protected: Iterable[str]
) -> str | None:
    """Why a set of changed paths is not allowed, or None if it is."""
    editable, protected = list(editable), list(protected)
    touched_protected = [p for p in changed if matches(p, protected)]
    if touched_protected:
        return f"changes protected file(s): {', '.join(sorted(touched_protected))}"
    outside = [p for p in changed if not matches(p, editable)]
    if outside:
        return (
            f"changes file(s) outside `editable`: {', '.join(sorted(outside))}"
            f" (editable: {', '.join(editable)})"
        )
    return None


def check_protected(root: Path, recorded: Mapping[str, str]) -> str | None:
    """Why the protected files under `root` differ from `recorded`, or None if they match."""
    now = hash_files(root, recorded)
    changed = sorted(path for path, blob in recorded.items() if now[path] != blob)
    if changed:
        return f"protected file(s) modified: {', '.join(changed)}"
    return None
