"""Globs over a lab's paths, as `editable`, `protected`, `hidden` and policies write them.

gitignore-like: `*` and `?` stay within a path segment, `**` crosses them, and a
directory (`src/` or `src`) covers everything below it. One matcher for every
package that reads a glob of org code (the integrity guard, the configuration's
checks, the LLM's edits, CEL policies), so they can never disagree on what a
glob means. Imports nothing else of overnight.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


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
