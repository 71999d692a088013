"""The Session and SessionBackend protocols, their registry, and the helpers both backends share.

A *session* is one command running in a terminal of a known size: something can
type into it, read its screen, follow its raw output, resize it, and kill it. A
*backend* starts sessions and finds them again by name. Built-in backends (tmux,
pty) register here exactly as a plugin would.

Knows nothing about agents, labs, the store or the web page: a session is a
terminal, not an agent. Whoever names a session decides what it means.

Rules every backend keeps:
- Session names are `[A-Za-z0-9_-]{1,64}`; a backend never silently renames one.
- A command that exits leaves its session behind, readable (`capture()`,
  `exit_status()`), until `kill()`: a crashed agent's last screen is evidence.
- Every byte the command writes is appended to the session's log file
  (`Session.log_path`), which is also how output is streamed (`subscribe()`).
- Methods are safe to call from any thread; a `Session` object is a handle, and
  two handles with the same name on the same backend are the same session.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from overnight.errors import OvernightError, UserError
from overnight.plugins import Registry

Size = tuple[int, int]
"""(cols, rows)."""

DEFAULT_SIZE: Size = (120, 40)
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SessionError(OvernightError):
    """The terminal backend failed in a way the user cannot fix by editing input: our bug
    or a broken environment. Carries the backend's own message."""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(
            f"{name!r} is not a usable session name: use 1-64 letters, digits, '-' or '_'"
        )
    return name


def check_start(name: str, command: list[str], cwd: Path) -> None:
    """What every backend refuses before starting anything."""
    check_name(name)
    if not command:
        raise UserError(f"session {name}: empty command")
    if not Path(cwd).is_dir():
        raise UserError(f"session {name}: working directory {cwd} does not exist")


def screen_digest(screen: str) -> str:
    return hashlib.blake2b(screen.encode(), digest_size=8).hexdigest()


@runtime_checkable
class Subscription(Protocol):
    """Incremental raw output of one session, from the moment of `subscribe()` on."""

    def read(self, timeout: float = 0.0) -> bytes:
        """Bytes written since the last read; waits up to `timeout` s for some, b"" if none."""

    def close(self) -> None: ...

    def __enter__(self) -> Subscription: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Session(Protocol):
    name: str

    @property
    def log_path(self) -> Path:
        """Raw output of the command (escape sequences included), appended as it comes."""

    def pid(self) -> int | None:
        """Pid of the command running in the session, None once it has exited."""

    def alive(self) -> bool: ...

    def exit_status(self) -> int | None:
        """The command's exit code once it has ended (-N if killed by signal N), else None."""

    def send_text(self, text: str) -> None:
        """Type `text` literally (no key names are interpreted)."""

    def send_keys(self, *keys: str) -> None:
        """Press named keys, tmux spelling: "Enter", "C-c", "Escape", "Up", "Tab"."""

    def capture(self, lines: int | None = None) -> str:
        """The visible screen as text, trailing blank rows removed; with `lines`, that many
        rows of scrollback above it too."""

    def screen_hash(self) -> str:
        """Changes when the visible screen does and not otherwise (idle detection)."""

    def resize(self, cols: int, rows: int) -> None: ...

    def kill(self) -> None:
        """End the command and forget the session. Idempotent."""

    def attach_command(self) -> list[str]:
        """What a user types to get an interactive terminal into the session."""

    def subscribe(self) -> Subscription:
        """Follow the raw output from now on (for the web terminal)."""


@runtime_checkable
class SessionBackend(Protocol):
    name: str

    def start(
        self,
        name: str,
        command: list[str],
        cwd: Path,
        env: Mapping[str, str],
        size: Size = DEFAULT_SIZE,
        *,
        log: Path | None = None,
    ) -> Session:
        """Run `command` in a new session with exactly `env` (plus the TERM the terminal
        sets) in `cwd`. `log` defaults to a file in the backend's private state directory."""

    def get(self, name: str) -> Session | None:
        """The session called `name`, dead or alive, or None if there is none."""

    def list(self) -> list[str]:
        """Names of this backend's sessions, sorted; never anyone else's."""


class LogTail:
    """A Subscription that follows a session's log file from its current end.

    Polling a file every few milliseconds costs one `read()` syscall and survives both
    a restart of the reader and a restart of the command center, which a pipe would not.
    """

    POLL = 0.02

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self._file = path.open("rb")
        self._file.seek(0, 2)

    def read(self, timeout: float = 0.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            data = self._file.read()
            if data or time.monotonic() >= deadline:
                return data
            time.sleep(self.POLL)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(session: Session, text: str, timeout: float = 5.0, *, interval: float = 0.02) -> str:
    """Poll the session's screen until `text` appears; return the screen. Raises TimeoutError
    with the last screen in the message, so a failing test shows what was there instead."""
    deadline = time.monotonic() + timeout
    while True:
        screen = session.capture(lines=200)
        if text in screen:
            return screen
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{text!r} not on {session.name}'s screen after {timeout}s:\n{screen}"
            )
        time.sleep(interval)


def wait_until(
    condition: Callable[[], bool], timeout: float = 5.0, *, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met after {timeout}s")
        time.sleep(interval)


class BackendFactory(Protocol):
    """What a plugin's `register_session_backends(register)` hook registers: a backend
    class (or any callable) that knows its name and makes a backend with its defaults."""

    @property
    def name(self) -> str: ...

    def __call__(self) -> SessionBackend: ...


Register = Callable[[BackendFactory], None]
"""What a plugin's `register_session_backends(register)` hook is given."""

BACKENDS: Registry[BackendFactory] = Registry("register_session_backends")


def create(name: str) -> SessionBackend:
    """The backend registered as `name` ("tmux", "pty", or a plugin's)."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise UserError(
            f"unknown session backend {name!r}; available: {', '.join(BACKENDS.names())}"
        )
    return factory()


def available() -> list[str]:
    return BACKENDS.names()


def default_backend() -> SessionBackend:
    """tmux when the binary is installed (sessions outlive overnight), else pty."""
    try:
        return create("tmux")
    except UserError:  # it says how to install tmux; pty needs nothing
        return create("pty")
