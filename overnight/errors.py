"""Every exception overnight raises on purpose, sorted by whose fault it is.

    OvernightError
    ├── UserError            bad input: the message names the file, the field and the fix
    │   ├── ConfigError      overnight.toml / program.md / policy files
    │   ├── RepoError        the lab's directory is not a usable git repository
    │   ├── LabBusy          another `overnight run` holds the lab
    │   └── PluginError      an installed plugin does not load or registers a name taken
    └── BaselineFailed       the unchanged code does not run or measure; nothing to improve on

    ValueError
    └── Invalid              a value org code cannot have, raised by a check of the file;
                             loading turns it into a ConfigError (a ValueError, so that
                             pydantic validators may raise it)

An agent's or a model's mistake (a bad diff, a crash, a hang, a protected file
touched) is never an exception here: it is recorded on the trial and the loop
goes on. Anything else that escapes is our bug and should raise loudly.
"""

from __future__ import annotations

from pathlib import Path


class OvernightError(Exception):
    """Base of every deliberate overnight error."""


class UserError(OvernightError):
    """Something the user can fix; `str()` is the whole message shown to them."""


class ConfigError(UserError):
    """A file of org code is wrong. Always says where, what, and how to fix it."""

    def __init__(
        self,
        file: Path | str,
        problem: str,
        *,
        field: str | None = None,
        line: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = str(file)
        self.field = field
        self.line = line
        self.problem = problem
        self.fix = fix
        where = self.file + (f":{line}" if line else "")
        head = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(head + (f"\n  fix: {fix}" if fix else ""))


class RepoError(UserError):
    """The lab directory is not a git repository overnight can work in."""


class PluginError(UserError):
    """An installed plugin (a package's `overnight` entry point) does not load, fails in
    its hook or registers a name already taken; the message names the package and the fix."""


class LabBusy(UserError):
    """Another overnight process holds this lab."""

    def __init__(self, lab_dir: Path, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"{lab_dir}: another `overnight run` ({who}) is already running this lab.\n"
            f"  fix: watch it with `overnight status {lab_dir}`, or stop it first"
            + (f" (Ctrl-C in its terminal, or `kill {pid}`)." if pid else ".")
        )


class Invalid(ValueError):
    """A value a check of org code refuses: the problem and its fix, kept apart.

    `at` is where the problem is, relative to what the check validated (a model
    check that blames one of its fields says which); `first` is, for a repeat,
    where the repeated thing was first written. `str()` is the problem and the
    fix in one line, for callers outside configuration loading.
    """

    def __init__(
        self,
        problem: str,
        *,
        fix: str,
        at: tuple[str | int, ...] = (),
        first: tuple[str | int, ...] | None = None,
    ) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix
        self.at = at
        self.first = first


class BaselineFailed(OvernightError):
    """The unchanged code could not be measured, so no trial could ever be judged."""
