"""Search/replace edit blocks: reading them out of a model's reply, checking them against a
worktree, and writing them.

A reply is a `DESCRIPTION: <one line>` line and one or more blocks:

    path/relative/to/lab.py
    <<<<<<< SEARCH
    exact existing lines
    =======
    replacement lines
    >>>>>>> REPLACE

An empty SEARCH on a file that does not exist creates it. The usual model noise
(``` fences, prose before and after, `**path**`) is accepted. Every problem is
reported at once, in words a model can act on: which globs are editable, "not
found" with the closest lines, "found N times" with where.

Knows nothing about HTTP, prompts or the store: `llm.py` asks the model, this
module only reads and applies what it answered.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from overnight.globs import matches

MAX_DESCRIPTION = 200
"""Characters of a description kept (it becomes a commit subject and a ledger cell)."""
_HINT_MAX_FILE_LINES = 20_000
"""Above this, no "closest lines" hint: it would cost more than it helps."""

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^={7}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DESCRIPTION = re.compile(r"^[\s*_#>`-]*DESCRIPTION[*_`]*\s*:\s*(.*)$", re.IGNORECASE)
_PATH_LABEL = re.compile(r"^(?:file|path|filename)\s*:\s*", re.IGNORECASE)

FORMAT = """\
DESCRIPTION: <one line saying what you changed and why>
path/relative/to/lab.py
<<<<<<< SEARCH
exact existing lines, copied character for character
=======
the lines that replace them
>>>>>>> REPLACE"""
"""The reply format, as shown to a model."""


class EditError(Exception):
    """A reply or an edit that cannot be used; `problems` lists each one, as told to the model."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Edit:
    """Replace `search` with `replace` in `path`. Both are whole lines, each ending in a
    newline (so an empty `search` is the empty string)."""

    path: str
    search: str
    replace: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "search": self.search, "replace": self.replace}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Edit:
        return cls(str(data["path"]), str(data["search"]), str(data["replace"]))


def render(description: str, edits: Iterable[Edit]) -> str:
    """A reply in the format `parse` reads (the inverse of `parse`)."""
    out = [f"DESCRIPTION: {description}"]
    for e in edits:
        out += [e.path, "<<<<<<< SEARCH", e.search + "=======", e.replace + ">>>>>>> REPLACE"]
    return "\n".join(out) + "\n"


# --- parsing -----------------------------------------------------------------------------


def parse(reply: str) -> tuple[str, list[Edit]]:
    """The description and edit blocks of a reply, in order; EditError says what is wrong."""
    lines = reply.replace("\r\n", "\n").split("\n")
    problems: list[str] = []
    description: str | None = None
    description_at = -1
    edits: list[Edit] = []
    blocks = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if description is None and not blocks:
            found = _DESCRIPTION.match(line)
            if found:
                description = found.group(1).strip().strip("*_`").strip()
                description_at = i
                i += 1
                continue
        if _REPLACE.match(line):
            problems.append(
                f"line {i + 1}: `>>>>>>> REPLACE` without its `<<<<<<< SEARCH` and `=======` "
                "lines before it"
            )
            i += 1
            continue
        if not _SEARCH.match(line):
            i += 1
            continue
        blocks += 1
        n = blocks
        path, why = _path_before(lines, i, description_at, edits)
        search: list[str] = []
        replace: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            _DIVIDER.match(lines[j]) or _SEARCH.match(lines[j]) or _REPLACE.match(lines[j])
        ):
            search.append(lines[j])
            j += 1
        if j == len(lines) or not _DIVIDER.match(lines[j]):
            problems.append(
                f"block {n}{_of(path)}: no `=======` line between `<<<<<<< SEARCH` "
                "and `>>>>>>> REPLACE`"
            )
            i = j if j < len(lines) and _SEARCH.match(lines[j]) else j + 1
            continue
        j += 1
        while j < len(lines) and not (_REPLACE.match(lines[j]) or _SEARCH.match(lines[j])):
            replace.append(lines[j])
            j += 1
        if j == len(lines) or not _REPLACE.match(lines[j]):
            problems.append(f"block {n}{_of(path)}: not closed by a `>>>>>>> REPLACE` line")
            i = j
            continue
        i = j + 1
        if path is None:
            problems.append(f"block {n}: {why}")
            continue
        edits.append(Edit(path, _text(search), _text(replace)))
    if description is None:
        problems.insert(0, "no `DESCRIPTION: <one line>` line first in the reply")
    elif not description:
        problems.insert(0, "the DESCRIPTION line is empty: say in one line what you changed")
    if not blocks and not any(_REPLACE.match(line) for line in lines):
        problems.append(
            "no edit blocks: write each change as a `<<<<<<< SEARCH` ... `=======` ... "
            "`>>>>>>> REPLACE` block under the file's path"
        )
    if problems:
        raise EditError(problems)
    assert description is not None
    return _shorten(description), edits


def _of(path: str | None) -> str:
    return f" ({path})" if path else ""


def _text(lines: Sequence[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _shorten(description: str) -> str:
    if len(description) <= MAX_DESCRIPTION:
        return description
    return description[: MAX_DESCRIPTION - 1].rstrip() + "…"


def _path_before(
    lines: Sequence[str], at: int, description_at: int, edits: Sequence[Edit]
) -> tuple[str | None, str]:
    """The path named above the SEARCH line at `at` (or the previous block's, when the
    block follows straight on from it), else None and why."""
    k = at - 1
    while k > description_at and (not lines[k].strip() or _FENCE.match(lines[k])):
        k -= 1
    if k <= description_at:
        return None, "no file path on the line before `<<<<<<< SEARCH`"
    line = lines[k]
    if _REPLACE.match(line):
        if edits and edits[-1].path:
            return edits[-1].path, ""
        return None, "no file path on the line before `<<<<<<< SEARCH`"
    path = _PATH_LABEL.sub("", line.strip().strip("*`'\"#").strip()).strip("*`'\"").strip()
    path = path.removesuffix(":").strip()
    if not path or any(c.isspace() for c in path):
        return None, (
            "put the file's path alone on the line before `<<<<<<< SEARCH` "
            f"(found {line.strip()!r})"
        )
    return path, ""


# --- checking and applying ---------------------------------------------------------------


def apply(
    root: Path, edits: Sequence[Edit], editable: Sequence[str], protected: Sequence[str]
) -> dict[str, str]:
    """The new text of every file the edits touch, after applying them in order to the
    files under `root`; nothing is written. EditError lists every edit that does not apply."""
    problems: list[str] = []
    texts: dict[str, str | None] = {}  # path -> current text (None: the file does not exist)
    for n, edit in enumerate(edits, 1):
        where = f"block {n} ({edit.path})"
        path, problem = _check_path(edit.path, editable, protected, root)
        if problem:
            problems.append(f"block {n}: {problem}")
            continue
        if path not in texts:
            try:
                texts[path] = _read(root / path)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
        text = texts[path]
        if not edit.search.strip():
            if text:
                problems.append(
                    f"{where}: SEARCH is empty, which creates a new file, but {path} exists; "
                    "copy the lines to change into SEARCH"
                )
                continue
            texts[path] = edit.replace
            continue
        if text is None:
            problems.append(
                f"{where}: {path} does not exist; to create it, leave SEARCH empty"
                + _existing_hint(root, editable)
            )
            continue
        new, problem = _replace(text, edit.search, edit.replace, path)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        texts[path] = new
    if problems:
        raise EditError(problems)
    return {path: text for path, text in texts.items() if text is not None}


def write(root: Path, texts: Mapping[str, str]) -> None:
    """Write the files `apply` computed."""
    for path, text in texts.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))


def _check_path(
    raw: str, editable: Sequence[str], protected: Sequence[str], root: Path
) -> tuple[str, str | None]:
    path = raw.replace("\\", "/").strip()
    while path.startswith("./"):
        path = path[2:]
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or ".git" in parts:
        return path, f"{raw!r} is not a path inside the lab; give it relative to the lab's top"
    globs = ", ".join(editable)
    if matches(path, protected):
        return path, (
            f"{path} is protected and not editable (the lab's rules forbid changing it); "
            f"editable files match: {globs}"
        )
    if not matches(path, editable):
        return path, (
            f"{path} is not editable; editable files match: {globs}"
            + _existing_hint(root, editable)
        )
    if (root / path).is_dir():
        return path, f"{path} is a directory; name a file"
    return path, None


def _existing_hint(root: Path, editable: Sequence[str]) -> str:
    names = editable_files(root, editable)[:10]
    return f" (existing: {', '.join(names)})" if names else ""


def editable_files(root: Path, editable: Sequence[str]) -> list[str]:
    """The files under `root` (outside .git) that match the editable globs, sorted."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        base = Path(folder).relative_to(root)
        for name in files:
            rel = (base / name).as_posix()
            if name != ".git" and matches(rel, editable):
                out.append(rel)
    return sorted(out)


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not a UTF-8 text file; it cannot be edited") from None


def _replace(text: str, search: str, replace: str, path: str) -> tuple[str, str | None]:
    """`text` with the one occurrence of the whole lines `search` replaced, or why not."""
    crlf = "\r\n" in text
    ends = text.endswith("\n")
    lines = (text[:-1] if ends else text).split("\n")
    want = search[:-1].split("\n")
    key = [line.removesuffix("\r") for line in lines]
    k = len(want)
    starts = [i for i in range(len(lines) - k + 1) if key[i : i + k] == want]
    if not starts:  # forgive trailing whitespace, the commonest copying slip
        loose = [w.rstrip() for w in want]
        starts = [
            i for i in range(len(lines) - k + 1) if [x.rstrip() for x in key[i : i + k]] == loose
        ]
    if not starts:
        return text, f"SEARCH not found in {path}" + _nearest(key, want)
    if len(starts) > 1:
        where = ", ".join(str(i + 1) for i in starts[:10])
        return text, (
            f"SEARCH found {len(starts)} times in {path} (at lines {where}); "
            "include more of the surrounding lines so it matches exactly once"
        )
    i = starts[0]
    new = [] if not replace else replace[:-1].split("\n")
    if crlf:
        new = [line + "\r" for line in new]
        if new and i + k == len(lines) and not lines[-1].endswith("\r"):
            new[-1] = new[-1].removesuffix("\r")
    out = lines[:i] + new + lines[i + k :]
    if not out:
        return "", None
    return "\n".join(out) + ("\n" if ends else ""), None


def _nearest(lines: Sequence[str], want: Sequence[str]) -> str:
    """Where the file holds lines closest to the SEARCH, to show the model what is there."""
    first = next((w.strip() for w in want if w.strip()), "")
    if not first or len(lines) > _HINT_MAX_FILE_LINES:
        return ""
    stripped = [line.strip() for line in lines]
    close = difflib.get_close_matches(first, stripped, n=1, cutoff=0.6)
    if not close:
        return ""
    at = stripped.index(close[0])
    lead = next(i for i, w in enumerate(want) if w.strip())
    start = max(0, at - lead)
    shown = lines[start : start + min(len(want), 15)]
    body = "\n".join(f"{start + n + 1:>5}| {line}" for n, line in enumerate(shown))
    return f"; the closest lines in the file are (numbered here, not in the file):\n{body}"
