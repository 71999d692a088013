"""A hand-run history brought into the ledger: autoresearch's results.tsv as a new run's first trials.

Owns reading a `results.tsv` strictly (every problem named by its file and line, with
the fix), matching its short commits to the repository's, and starting the run that
continues it: from the last kept commit, with every row a finished trial of the agent
`imported` (keep, discard, crash as kept, discarded, crashed; the first row, as
autoresearch's analysis reads it, the baseline). Being in the ledger, the history is in
what every agent reads (the llm runtime's history, the lab notebook), and
`overnight ledger --tsv` gives the whole story back in one file. The imported numbers
were measured elsewhere, so no ratchet starts from them: `overnight run` measures the
starting commit again as the run's own baseline. Knows nothing about how trials run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from overnight.errors import UserError
from overnight.lab.git import Git
from overnight.lab.lab import Lab
from overnight.lab.preflight import StartChecks
from overnight.records import IMPORTED, ImportedTrial, TrialStatus

_STATUS = {"keep": TrialStatus.kept, "discard": TrialStatus.discarded, "crash": TrialStatus.crashed}
_HASH = re.compile(r"^[0-9a-fA-F]{4,64}$")
_COLUMNS = "commit, {metric}, memory_gb, status, description"


@dataclass(frozen=True)
class Row:
    """One line of results.tsv, read."""

    line: int
    commit: str
    metric: float | None
    """None for a crash (autoresearch writes 0.000000 there)."""
    memory_gb: float | None
    status: TrialStatus
    description: str


@dataclass(frozen=True)
class Imported:
    """What `import_history` did, for the person who asked."""

    run_id: str
    rows: list[Row]
    start: str
    """The commit the run starts from."""
    start_row: Row | None
    """The row of that commit (the last kept one), None when --from chose another."""
    warnings: list[str]


def read(path: Path, metric: str) -> list[Row]:
    """The rows of a results.tsv whose metric column is `metric`; a UserError naming the
    line of the first problem otherwise."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such file.\n  fix: name the results.tsv of your autoresearch run "
            "(it sits untracked in the repository's top folder)."
        ) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise _error(path, line, "is not UTF-8 text", "save the file as UTF-8") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise _error(
            path, 1, "has no header", f"the first line names the columns: {_columns(metric)}"
        )
    header = [cell.strip() for cell in lines[0].split("\t")]
    if len(header) < 5:
        raise _error(
            path,
            1,
            f"has {len(header)} tab-separated column{'s' if len(header) != 1 else ''}; "
            f"results.tsv has five: {_columns(metric)}",
            "separate the columns with tabs (commas and spaces are not separators here)",
        )
    expected = ["commit", metric, "memory_gb", "status", "description"]
    for i, (got, want) in enumerate(zip(header, expected, strict=False)):
        if got == want:
            continue
        if i == 1:
            raise _error(
                path,
                1,
                f"its metric column is {got!r}, and this lab's metric is {metric!r}",
                f"import a history of {metric}, or set metric = {got!r} in overnight.toml "
                "if that is the lab's metric",
            )
        raise _error(
            path,
            1,
            f"column {i + 1} is {got!r}, not {want!r}",
            f"the columns are, in this order: {_columns(metric)}",
        )
    rows = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        rows.append(_row(path, number, raw.split("\t"), len(header), metric))
    if not rows:
        raise _error(
            path, 1, "has a header and no rows", "import the file once experiments are in it"
        )
    if not any(r.status is TrialStatus.kept for r in rows):
        raise _error(
            path,
            rows[-1].line,
            "has no row with status keep, so there is no commit to continue from",
            "import a history with its baseline (the first row, keep), or start from a "
            "commit of your choice with `overnight run --new --from REF`",
        )
    return rows


def _row(path: Path, number: int, cells: list[str], width: int, metric: str) -> Row:
    if len(cells) < 5:
        raise _error(
            path,
            number,
            f"has {len(cells)} column{'s' if len(cells) != 1 else ''}; a row has five: "
            f"{_columns(metric)}",
            "separate the five values with tabs, one row per line",
        )
    if len(cells) > width:
        raise _error(
            path,
            number,
            f"has {len(cells)} columns and the header {width}",
            "a description may not hold a tab: replace it with a space",
        )
    commit, value, memory, status_text, description = (c.strip() for c in cells[:5])
    if not _HASH.match(commit):
        raise _error(
            path,
            number,
            f"{commit!r} is not a commit hash",
            "the first column is the experiment's commit, e.g. a1b2c3d (`git log --oneline`)",
        )
    status = _STATUS.get(status_text.lower())
    if status is None:
        raise _error(
            path,
            number,
            f"status {status_text!r} is not keep, discard or crash",
            "write keep (it improved and stays), discard (it did not) or crash (it failed)",
        )
    measured = _number(value)
    if status is not TrialStatus.crashed and (measured is None or not math.isfinite(measured)):
        raise _error(
            path,
            number,
            f"{metric} {value!r} is not a number",
            f"write the {status_text.lower()} run's {metric}, e.g. 0.997900 (a crash's is "
            "0.000000)",
        )
    gigabytes = _number(memory)
    if status is not TrialStatus.crashed and (
        gigabytes is None or not math.isfinite(gigabytes) or gigabytes < 0
    ):
        raise _error(
            path,
            number,
            f"memory_gb {memory!r} is not a size in GB",
            "write the peak memory in GB, e.g. 44.0 (0.0 if it was not measured)",
        )
    crashed = status is TrialStatus.crashed
    return Row(
        number,
        commit.lower(),
        None if crashed else measured,
        None if crashed else gigabytes,
        status,
        description,
    )


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _columns(metric: str) -> str:
    return _COLUMNS.format(metric=metric)


def _error(path: Path, line: int, problem: str, fix: str) -> UserError:
    return UserError(f"{path}:{line}: {problem}.\n  fix: {fix}.")


def import_history(
    root: Path, path: Path, base_ref: str | None = None, *, checks: StartChecks
) -> Imported:
    """Start a new run of the lab at `root` with the history in `path`: from `base_ref`,
    else from the last kept row's commit (`checks` as `Lab.start` takes them)."""
    from overnight.org import load_org  # the lab's own checks come first, in Lab.start

    root = root.resolve()
    metric = load_org(root).config.lab.metric
    rows = read(path, metric)
    git = Git.open(root)
    found = git.commits([r.commit for r in rows])
    full = {r.line: sha for r, sha in zip(rows, found, strict=True)}
    start_row = None
    if base_ref is None:
        start_row = next(r for r in reversed(rows) if r.status is TrialStatus.kept)
        if full[start_row.line] is None:
            raise _error(
                path,
                start_row.line,
                f"the last kept commit, {start_row.commit}, is not in {root}",
                "fetch the branch the experiments were committed on (e.g. `git fetch origin "
                "autoresearch/<tag>`), or say where to start with --from REF",
            )
        base_ref = full[start_row.line]
    missing = [r for r in rows if full[r.line] is None]
    lab = Lab.start(root, checks=checks, new_run=True, base_ref=base_ref)
    try:
        trials = []
        parent: str | None = None  # the last kept commit so far: where autoresearch stood
        parent_full: str | None = None
        for row in rows:
            sha = full[row.line]
            commit = sha or row.commit
            diff = None
            if sha and parent_full and parent_full != sha:
                diff = git.diff(parent_full, sha)[0] or None
            trials.append(
                ImportedTrial(
                    agent=IMPORTED,
                    status=row.status,
                    parent_commit=parent or commit,
                    candidate_commit=commit,
                    description=row.description,
                    proposal={"imported": path.name, "line": row.line},
                    metric=row.metric,
                    memory_gb=row.memory_gb,
                    diff=diff,
                )
            )
            if row.status is TrialStatus.kept:
                parent, parent_full = commit, sha
        lab.store.import_trials(lab.run.id, trials)
        lab.store.append_event(
            lab.run.id,
            "run.imported",
            {
                "file": str(path.resolve()),
                "rows": len(rows),
                "start": lab.run.base_commit,
                "missing_commits": [r.commit for r in missing],
            },
        )
        warnings = list(lab.warnings)
        if missing:
            shown = ", ".join(f"{r.commit} (line {r.line})" for r in missing[:5])
            warnings.append(
                f"{len(missing)} commit(s) of {path.name} are not in this repository, so their "
                f"diffs are not in the ledger: {shown}" + (" ..." if len(missing) > 5 else "")
            )
        return Imported(lab.run.id, rows, lab.run.base_commit, start_row, warnings)
    finally:
        lab.close()
