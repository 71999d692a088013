"""The integrity guard: the ground truth of what a trial was allowed to change.

Before a run, a candidate's diff against its parent may touch only `editable`
globs, and every `protected` file in the worktree must hash as recorded when
the run started; after the run, the protected files must still hash the same.
Whatever route an agent took (an edit tool, `cat >`, a script), a trial that
breaks either rule is rejected. Knows nothing about the store or the runner; what
a glob matches is `overnight.globs`'s to say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from overnight.globs import matches
from overnight.lab.git import blob_hash


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
    return check_hashes(hash_files(root, recorded), recorded)


def check_hashes(now: Mapping[str, str], recorded: Mapping[str, str]) -> str | None:
    """Why the protected files, hashed as `now` (on a cluster's node, after the run),
    differ from `recorded`, or None if they match."""
    changed = sorted(path for path, blob in recorded.items() if now.get(path) != blob)
    if changed:
        return f"protected file(s) modified: {', '.join(changed)}"
    return None
