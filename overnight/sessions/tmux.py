"""The tmux session backend (the default): sessions that outlive the command center.

Owns overnight's own tmux server, reached through one socket (`tmux -L overnight`,
i.e. `$TMUX_TMPDIR/tmux-UID/overnight`), so overnight's sessions never mix with
the user's tmux and `list()` only ever sees ours. It calls the `tmux` binary
directly (one short-lived client process per call, ~1-2 ms) rather than through
libtmux: no dependency, nothing to keep in sync, and every call is a command a
user can replay by hand.

How the server is set up, and why:
- `-f /dev/null`: the user's ~/.tmux.conf never changes what an agent sees.
- Every client call runs with an empty environment, so the server's global
  environment is (nearly) empty and a session gets exactly the `env` it was given
  via `new-session -e` (plus TERM, TMUX, TMUX_PANE, TERM_PROGRAM*, which tmux
  sets). One agent's key can therefore never leak into another's session.
- `remain-on-exit on`: a crashed command's last screen and exit status stay
  readable until `kill()`.
- `status off`: the pane is exactly the requested size.
- `pipe-pane` appends the pane's raw output to the session's log file, set in the
  same client call as `new-session`, so no early output is lost. The log path is
  kept on the session (`@overnight_log`), so a restarted process finds it again.

Knows nothing about agents or what runs in the session.
"""

from __future__ import annotations

import builtins
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from overnight.errors import UserError
from overnight.sessions.base import (
    DEFAULT_SIZE,
    LogTail,
    Register,
    SessionError,
    Size,
    check_name,
    check_start,
    screen_digest,
)

DEFAULT_SOCKET = "overnight"
HISTORY_LIMIT = 10_000
_INFO = "#{pane_pid}\t#{pane_dead}\t#{pane_dead_status}\t#{pane_dead_signal}\t#{@overnight_log}"


def tmux_binary() -> str | None:
    return shutil.which("tmux")


def socket_path(socket: str) -> Path:
    """Where `tmux -L socket` looks, so `attach_command()` reaches the same server."""
    base = os.environ.get("TMUX_TMPDIR") or "/tmp"
    return Path(base) / f"tmux-{os.getuid()}" / socket


class TmuxBackend:
    name = "tmux"

    def __init__(self, socket: str = DEFAULT_SOCKET, *, state_dir: Path | None = None) -> None:
        binary = tmux_binary()
        if binary is None:
            raise UserError(
                "tmux is not installed, and agents in terminal sessions need it to survive a "
                "restart of overnight.\n"
                "  fix: apt-get install tmux (Debian/Ubuntu; brew install tmux on macOS), or use "
                'the pty session backend (sessions.create("pty"), chosen automatically when tmux '
                "is absent), whose sessions end when overnight does."
            )
        self.binary = binary
        self.socket = check_name(socket)
        self.path = socket_path(socket)
        self.state_dir = (
            state_dir or Path(tempfile.gettempdir()) / f"overnight-{os.getuid()}" / socket
        )

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One tmux client call against overnight's server. Empty environment on purpose."""
        proc = subprocess.run(
            [self.binary, "-S", str(self.path), "-u", "-f", os.devnull, *args],
            env={},
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise SessionError(f"tmux {shlex.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc

    def start(
        self,
        name: str,
        command: list[str],
        cwd: Path,
        env: Mapping[str, str],
        size: Size = DEFAULT_SIZE,
        *,
        log: Path | None = None,
    ) -> TmuxSession:
        check_start(name, command, cwd)
        if self.get(name) is not None:
            raise UserError(
                f"a session named {name} already exists on tmux socket {self.socket!r}; "
                f"look at it with `tmux -L {self.socket} attach -t {name}` or kill it first"
            )
        log = Path(log) if log else self.state_dir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log.touch(mode=0o600)
        cols, rows = size
        launcher = self._launcher(name, command, env)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # TMUX_TMPDIR too
        # One client call: options first, then the session, then its log pipe, so the
        # options apply to the new pane and its first bytes reach the log.
        # `#` is tmux's format character in -c and pipe-pane's command: double it.
        try:
            self._start_chain(name, launcher, cwd, cols, rows, log)
        except SessionError:
            self.tmux("kill-session", "-t", f"={name}", check=False)  # half-made: undo
            raise
        return TmuxSession(self, name)

    def _launcher(self, name: str, command: list[str], env: Mapping[str, str]) -> list[str]:
        """The command, started by a shell that first loads `env` from a 0600 file.

        Passing values as `new-session -e K=V` would show them (an agent's virtual
        key, say) in the tmux client's command line to anyone running `ps`. The
        file is deleted once read, and `exec` keeps the command's pid the pane's.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env_file = self.state_dir / f"{name}.env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            for key, value in env.items():
                fh.write(f"export {key}={shlex.quote(value)}\n")
        return ["/bin/sh", "-c", '. "$0" && rm -f -- "$0" && exec "$@"', str(env_file), *command]

    def _start_chain(
        self,
        name: str,
        command: list[str],
        cwd: Path,
        cols: int,
        rows: int,
        log: Path,
    ) -> None:
        # The server is up before the session exists: a command that exits within
        # milliseconds of a brand-new server's start loses its exit status (tmux 3.3a,
        # 1 in 3 in our runs; 0 in 20 with the server already up). exit-empty off keeps
        # the (idle, ~0 CPU) server for the next start; kill_server() ends it.
        self.tmux(
            "start-server", ";",
            "set-option", "-g", "exit-empty", "off", ";",
            "set-option", "-g", "history-limit", str(HISTORY_LIMIT), ";",
            "set-option", "-g", "status", "off", ";",
            "set-option", "-g", "default-shell", "/bin/sh", ";",
            "set-option", "-g", "update-environment", "", ";",
            "set-option", "-wg", "remain-on-exit", "on",
        )  # fmt: skip
        self.tmux(
            "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows),
            "-c", str(Path(cwd).resolve()).replace("#", "##"),
            # the launcher has several arguments, so tmux execs it directly (no shell)
            *command, ";",
            "set-option", "-t", f"={name}:", "@overnight_log", str(log), ";",
            "pipe-pane", "-t", f"={name}:", ("exec cat >> " + shlex.quote(str(log))).replace("#", "##"),
        )  # fmt: skip

    def get(self, name: str) -> TmuxSession | None:
        check_name(name)
        if self.tmux("has-session", "-t", f"={name}", check=False).returncode != 0:
            return None
        return TmuxSession(self, name)

    def list(self) -> list[str]:
        proc = self.tmux("list-sessions", "-F", "#{session_name}", check=False)
        if proc.returncode != 0:  # no server running: no sessions
            return []
        return sorted(proc.stdout.split())

    def capture_many(self, names: builtins.list[str]) -> dict[str, str]:
        """Visible screens of many sessions in one tmux call (the command center's tiles).
        Sessions that do not exist are left out."""
        present = set(self.list())
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        marker = "\x1eovernight-screen\x1e"
        args: builtins.list[str] = []
        for n in wanted:
            args += [
                "display-message",
                "-p",
                marker,
                ";",
                "capture-pane",
                "-p",
                "-t",
                f"={n}:^",
                ";",
            ]
        out = self.tmux(*args[:-1]).stdout
        chunks = out.split(marker + "\n")[1:]
        return {n: _trim(c) for n, c in zip(wanted, chunks, strict=True)}

    def kill_server(self) -> None:
        """Kill every overnight session on this socket at once (tests, `overnight down`)."""
        self.tmux("kill-server", check=False)
        self.path.unlink(missing_ok=True)  # tmux leaves the socket file behind


class TmuxSession:
    def __init__(self, backend: TmuxBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        # The session's first window, where the agent runs: `={name}:` alone means its
        # current window, which is a person's shell once they open one from the agent's
        # terminal (Ctrl-b c) - nudges were typed into it and its dead pane read as the
        # agent's exit.
        self._pane = f"={name}:^"

    def __repr__(self) -> str:
        return f"TmuxSession({self.name!r}, socket={self.backend.socket!r})"

    def _info(self) -> list[str] | None:
        proc = self.backend.tmux("display-message", "-p", "-t", self._pane, _INFO, check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.rstrip("\n").split("\t")

    @property
    def log_path(self) -> Path:
        info = self._info()
        if info is None or not info[4]:
            return self.backend.state_dir / f"{self.name}.log"
        return Path(info[4])

    def pid(self) -> int | None:
        info = self._info()
        if info is None or info[1] == "1":
            return None
        return int(info[0])

    def alive(self) -> bool:
        return self.pid() is not None

    def exit_status(self) -> int | None:
        # tmux marks a pane dead at EOF on its terminal, a moment before it reaps the
        # command's status: wait (briefly) for the reaping, seen as the pid vanishing.
        # tmux 3.3 reports no status for a command killed by a signal (#{pane_dead_signal}
        # arrived in 3.4), and, driven from Python, none for ~1 in 3 commands that exit
        # normally (cause not found yet): then this stays None while alive() is False and
        # the last screen is still kept.
        deadline = time.monotonic() + 1.0
        while True:
            info = self._info()
            if info is None or info[1] != "1":
                return None
            if info[3]:
                return -int(info[3])
            if info[2]:
                return int(info[2])
            if not _process_exists(int(info[0])) or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def send_text(self, text: str) -> None:
        self.backend.tmux("send-keys", "-l", "-t", self._pane, "--", text)

    def send_keys(self, *keys: str) -> None:
        self.backend.tmux("send-keys", "-t", self._pane, *keys)

    def capture(self, lines: int | None = None) -> str:
        return _trim(self.backend.tmux(*_capture_args(self._pane, lines)).stdout)

    def screen_hash(self) -> str:
        return screen_digest(self.capture())

    def resize(self, cols: int, rows: int) -> None:
        self.backend.tmux("resize-window", "-t", self._pane, "-x", str(cols), "-y", str(rows))

    def size(self) -> tuple[int, int]:
        out = self.backend.tmux(
            "display-message", "-p", "-t", self._pane, "#{pane_width} #{pane_height}"
        ).stdout.split()
        return int(out[0]), int(out[1])

    def kill(self) -> None:
        self.backend.tmux("kill-session", "-t", f"={self.name}", check=False)

    def attach_command(self) -> list[str]:
        where = (
            ["-L", self.backend.socket]
            if self.backend.path == socket_path(self.backend.socket)
            else ["-S", str(self.backend.path)]
        )
        return ["tmux", *where, "attach", "-t", f"={self.name}"]

    def subscribe(self) -> LogTail:
        return LogTail(self.log_path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # a zombie not yet reaped by tmux still exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _capture_args(pane: str, lines: int | None) -> list[str]:
    # -J joins wrapped lines (as the pty backend's screen does). When a pane dies, tmux
    # scrolls it by one line to print "Pane is dead (status N, ...)" at the bottom: take
    # that one line back from the history so the last screen is whole.
    live = f"capture-pane -p -J -t {pane}" + (f" -S -{lines}" if lines else "")
    dead = f"capture-pane -p -J -t {pane} -S -{(lines or 0) + 1}"
    return ["if-shell", "-F", "-t", pane, "#{pane_dead}", dead, live]


def _trim(screen: str) -> str:
    return "\n".join(line.rstrip() for line in screen.rstrip().split("\n"))


def register_session_backends(register: Register) -> None:
    register(TmuxBackend)
