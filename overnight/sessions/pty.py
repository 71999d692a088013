"""The pty session backend: the fallback when tmux is absent, or chosen explicitly.

Owns child processes on pseudo-terminals opened by this Python process, one
reader thread per session that appends every byte to the session's log file and
to a bounded in-memory buffer, and the rendering of that buffer as a screen.

What it does NOT do, on purpose:
- Survive its parent. The sessions belong to the process that started them: when
  the command center exits, the terminals close and the commands get SIGHUP.
  `get()` only finds sessions this backend object started. Use tmux for agents
  that must outlive a restart.
- Emulate a terminal. `capture()` renders the last 256 KiB of output with escape
  sequences removed and carriage returns/backspaces applied, which is exact for
  line-oriented programs (shells, `overnight try`) and approximate for full-screen
  ones (cursor addressing is ignored). The raw bytes, for a real emulator such as
  xterm.js, are in the log and come from `subscribe()`.
- Allow attaching from another terminal: `attach_command()` follows the log read-only.

Knows nothing about agents or what runs in the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from overnight.errors import UserError
from overnight.sessions.base import (
    DEFAULT_SIZE,
    LogTail,
    Register,
    Size,
    check_start,
    screen_digest,
)

BUFFER_BYTES = 256 * 1024

KEYS = {
    "Enter": "\r",
    "Tab": "\t",
    "Escape": "\x1b",
    "Space": " ",
    "BSpace": "\x7f",
    "Up": "\x1b[A",
    "Down": "\x1b[B",
    "Right": "\x1b[C",
    "Left": "\x1b[D",
    "Home": "\x1b[H",
    "End": "\x1b[F",
    "PageUp": "\x1b[5~",
    "PPage": "\x1b[5~",
    "PageDown": "\x1b[6~",
    "NPage": "\x1b[6~",
    "DC": "\x1b[3~",
}

_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC (titles, hyperlinks)
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor motion, modes)
    r"|\x1b[()*+][0-~]"  # charset selection
    r"|\x1b[@-Z\\-_=>78]"  # other two-byte escapes
    r"|[\x00-\x07\x0b-\x0c\x0e-\x1f\x7f]"  # remaining controls except \b \t \n \r
)


def key_bytes(key: str) -> bytes:
    """tmux key names to what a terminal sends; anything unknown is sent as typed (as tmux does)."""
    if key in KEYS:
        return KEYS[key].encode()
    if len(key) == 3 and key[:2] in ("C-", "^") and key[2].isascii():
        return bytes([ord(key[2].lower()) & 0x1F]) if key[2] != "?" else b"\x7f"
    if len(key) == 3 and key.startswith("M-"):
        return b"\x1b" + key[2].encode()
    return key.encode()


def render(raw: bytes) -> list[str]:
    """Lines of text from raw terminal output: escapes dropped, \\r and \\b applied."""
    text = _ESCAPES.sub("", raw.decode("utf-8", "replace")).replace("\r\n", "\n")
    lines = []
    for line in text.split("\n"):
        if "\r" not in line and "\b" not in line:
            lines.append(line.expandtabs())
            continue
        cells: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
            elif ch == "\b":
                col = max(0, col - 1)
            else:
                if col < len(cells):
                    cells[col] = ch
                else:
                    cells.append(ch)
                col += 1
        lines.append("".join(cells).expandtabs())
    return lines


class PtySession:
    def __init__(
        self,
        backend: PtyBackend,
        name: str,
        command: list[str],
        cwd: Path,
        env: Mapping[str, str],
        size: Size,
        log: Path,
    ) -> None:
        self.backend = backend
        self.name = name
        self._log_path = log
        self._cols, self._rows = size
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._version = 0
        self._rendered: tuple[int, list[str]] = (-1, [])
        self._master, slave = os.openpty()
        termios.tcsetwinsize(self._master, (self._rows, self._cols))
        child_env = {"TERM": "xterm-256color", **env}
        try:
            self._proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=child_env,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=_take_terminal,
                close_fds=True,
            )
        except OSError as e:
            os.close(self._master)
            raise UserError(f"session {name}: cannot run {command[0]!r}: {e}") from e
        finally:
            os.close(slave)
        self._log = log.open("ab", buffering=0)
        self._stop = threading.Event()
        self._done = threading.Event()  # the command exited and its output is all read
        self._reader = threading.Thread(
            target=self._read_loop, name=f"pty-session-{name}", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"PtySession({self.name!r})"

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                if self._proc.poll() is not None:
                    break  # exited, and whatever holds the slave open is silent
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            self._log.write(data)
            with self._lock:
                self._buffer += data
                if len(self._buffer) > BUFFER_BYTES:
                    del self._buffer[: len(self._buffer) - BUFFER_BYTES]
                self._version += 1
        self._proc.wait()
        self._done.set()

    @property
    def log_path(self) -> Path:
        return self._log_path

    # Ended means ended *and drained*: whoever sees alive() turn False can read the last screen.
    def pid(self) -> int | None:
        return None if self._done.is_set() else self._proc.pid

    def alive(self) -> bool:
        return not self._done.is_set()

    def exit_status(self) -> int | None:
        return self._proc.returncode if self._done.is_set() else None

    def _write(self, data: bytes) -> None:
        if self._proc.poll() is None:
            os.write(self._master, data)

    def send_text(self, text: str) -> None:
        self._write(text.encode())

    def send_keys(self, *keys: str) -> None:
        self._write(b"".join(key_bytes(k) for k in keys))

    def _lines(self) -> list[str]:
        with self._lock:
            version, raw = self._version, bytes(self._buffer)
        if self._rendered[0] != version:
            self._rendered = (version, render(raw))
        return self._rendered[1]

    def capture(self, lines: int | None = None) -> str:
        rendered = self._lines()
        while rendered and not rendered[-1].strip():
            rendered = rendered[:-1]
        shown = rendered[-(self._rows + (lines or 0)) :]
        return "\n".join(line.rstrip() for line in shown).rstrip()

    def screen_hash(self) -> str:
        return screen_digest(self.capture())

    def resize(self, cols: int, rows: int) -> None:
        self._cols, self._rows = cols, rows
        if self._proc.poll() is None:
            termios.tcsetwinsize(self._master, (rows, cols))  # the kernel sends SIGWINCH

    def size(self) -> tuple[int, int]:
        return self._cols, self._rows

    def kill(self) -> None:
        self.backend._forget(self.name)
        if self._stop.is_set():
            return
        for sig in (signal.SIGHUP, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)
            try:
                self._proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        self._stop.set()
        self._reader.join()
        os.close(self._master)
        self._log.close()

    def attach_command(self) -> list[str]:
        # A pty belongs to this process; another terminal can only follow its output.
        return ["tail", "-f", str(self._log_path)]

    def subscribe(self) -> LogTail:
        return LogTail(self._log_path)


def _take_terminal() -> None:
    # Runs in the child after setsid(): make the pty its controlling terminal, so
    # C-c reaches the foreground job and resizing sends SIGWINCH.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyBackend:
    name = "pty"

    def __init__(self, *, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or Path(tempfile.gettempdir()) / f"overnight-{os.getuid()}" / (
            f"pty-{os.getpid()}-{time.monotonic_ns()}"
        )
        self._sessions: dict[str, PtySession] = {}
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        command: list[str],
        cwd: Path,
        env: Mapping[str, str],
        size: Size = DEFAULT_SIZE,
        *,
        log: Path | None = None,
    ) -> PtySession:
        check_start(name, command, cwd)
        log = Path(log) if log else self.state_dir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            if name in self._sessions:
                raise UserError(f"a pty session named {name} already exists; kill it first")
            session = PtySession(self, name, command, Path(cwd), env, size, log)
            self._sessions[name] = session
        return session

    def get(self, name: str) -> PtySession | None:
        with self._lock:
            return self._sessions.get(name)

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._sessions.pop(name, None)

    def kill_all(self) -> None:
        for name in self.list():
            session = self.get(name)
            if session:
                session.kill()


def register_session_backends(register: Register) -> None:
    register(PtyBackend)
