"""Private state: what overnight keeps in `.overnight/` is its user's alone, made so by a
real `overnight run`, while an experiment's own files keep the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from overnight.store import open_store, store_url
from tests.helpers.labs import make_lab
from tests.helpers.processes import OVERNIGHT

USER_UMASK = 0o027  # not the usual 022, so a mode that follows it cannot be a coincidence

EXPERIMENT = """\
import os
X = 0.5
Y = 5
with open("out.txt", "w") as fh:
    fh.write("the experiment's own result\\n")
os.makedirs("made", exist_ok=True)
print(f"out.txt mode {os.stat('out.txt').st_mode & 0o777:o}")
print(f"made mode {os.stat('made').st_mode & 0o777:o}")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


def overnight(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user whose umask is USER_UMASK runs it (killed if it outlives `timeout`)."""
    return subprocess.run(
        [*OVERNIGHT, *args], capture_output=True, text=True, timeout=240, umask=USER_UMASK
    )


def readable_by_others(state: Path) -> list[str]:
    """Everything under `state` that group or others may open, with its mode; the agents'
    worktrees (`worktrees/<run>/<agent>`) are the user's files and not looked into."""
    found = []
    for folder, dirs, files in os.walk(state):
        here = Path(folder)
        if here.parent == state / "worktrees":
            dirs.clear()
        for path in [here, *(here / name for name in files)]:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{path.relative_to(state)} {stat.S_IMODE(mode):o}")
    return found


def test_a_run_keeps_its_state_private_and_experiments_keep_the_users_umask(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab", script=EXPERIMENT)
    state = lab / ".overnight"
    done = overnight("run", str(lab), "--trials", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "overnight.db").stat().st_mode) == 0o600
    logs = sorted((state / "logs").glob("*/trial-*.log"))
    assert len(logs) == 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs)
    assert readable_by_others(state) == []

    # the experiment wrote in its worktree with the user's umask, not overnight's
    for log in logs:
        text = log.read_text()
        assert "out.txt mode 640" in text and "made mode 750" in text, text

    # a reader with a loose umask does not open the database's companions up either
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None and store.trials(run.id)
        for suffix in ("-wal", "-shm"):
            companion = state / f"overnight.db{suffix}"
            assert stat.S_IMODE(companion.stat().st_mode) == 0o600, suffix
    finally:
        store.close()

    report = overnight("report", str(lab))
    assert report.returncode == 0, report.stdout + report.stderr
    assert list((state / "reports").glob("*/report.md"))
    assert readable_by_others(state) == []


def test_a_lab_an_older_version_left_readable_is_made_private_at_start(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script=EXPERIMENT)
    state = lab / ".overnight"
    assert overnight("run", str(lab), "--trials", "1").returncode == 0
    for folder, dirs, files in os.walk(state):  # what versions before this one left
        here = Path(folder)
        if here.parent == state / "worktrees":
            for name in dirs:  # an agent's worktree, as git made it under the user's umask
                (here / name).chmod(0o755)
            dirs.clear()
        here.chmod(0o755)
        for name in files:
            (here / name).chmod(0o644)
    assert readable_by_others(state)

    done = overnight("run", str(lab), "--trials", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert readable_by_others(state) == []
    worktree = next((state / "worktrees").glob("*/*"))
    assert stat.S_IMODE(worktree.stat().st_mode) == 0o755, "an agent's worktree is the user's"
