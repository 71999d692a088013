"""The agents' terminals in the browser: cheap live mirrors for the tiles, and interactive attach.

Owns two things:
- `Mirror`: the visible screen of every agent's tmux session, for the tiles. Each
  tick is one `tmux list-panes -a` call that reads, per pane, when its window last
  had output and where its cursor is; only panes whose fingerprint moved (or that
  had output within the last second, the resolution of tmux's activity clock) are
  captured, all in one more call (`capture-pane -p -e`, colours kept). Fifty idle
  agents therefore cost one short tmux call per tick and nothing else.
- `Attachment`: an interactive terminal: `tmux attach` running on a pty of its own,
  its bytes pumped to and from a websocket (xterm.js on the other side).

Also turns a captured screen's SGR colour codes into HTML. Knows nothing about
agents beyond the session names it is given, nor about HTTP routing or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import html
import os
import re
import signal
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from overnight.sessions.tmux import TmuxBackend

_FORMAT = "\t".join(
    [
        "#{session_name}",
        "#{window_active}#{pane_active}",
        "#{window_activity}",
        "#{cursor_x},#{cursor_y}",
        "#{history_size}",
        "#{pane_width}x#{pane_height}",
        "#{pane_dead}",
    ]
)
_MARK = "\x1eovernight-mirror\x1e"


@dataclass
class _Pane:
    fingerprint: str = ""
    activity: int = 0
    captured_at: float = 0.0
    screen: str = ""
    """The last capture, as HTML."""


class Mirror:
    """Screens of a set of tmux sessions, re-captured only when they change."""

    def __init__(self, backend: TmuxBackend, sessions: Mapping[str, str]) -> None:
        self.backend = backend
        self.sessions = dict(sessions)
        """agent -> tmux session name."""
        self._by_session = {s: a for a, s in self.sessions.items()}
        self._panes: dict[str, _Pane] = {}
        self.captures = 0
        """Sessions captured so far (the benchmark reports it)."""

    def screen(self, agent: str) -> str | None:
        pane = self._panes.get(agent)
        return pane.screen if pane is not None else None

    def tick(self) -> dict[str, str]:
        """Capture what changed since the last tick; returns agent -> screen HTML for those."""
        if not self.sessions:
            return {}
        listing = self.backend.tmux("list-panes", "-a", "-F", _FORMAT, check=False)
        if listing.returncode != 0:
            return {}  # no tmux server: no sessions yet
        now = time.time()
        due: list[str] = []
        for line in listing.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) != 7 or parts[1] != "11":
                continue  # not the visible pane of its session
            agent = self._by_session.get(parts[0])
            if agent is None:
                continue
            pane = self._panes.setdefault(agent, _Pane())
            fingerprint = "\t".join(parts[2:])
            activity = int(parts[2] or 0)
            # tmux's activity clock has whole seconds: output in the second of our last
            # capture may have come after it, so such a pane is captured once more.
            recent = activity >= int(pane.captured_at)
            if fingerprint != pane.fingerprint or recent:
                pane.fingerprint, pane.activity = fingerprint, activity
                due.append(agent)
        if not due:
            return {}
        args: list[str] = []
        for agent in due:
            target = f"={self.sessions[agent]}:"
            args += ["display-message", "-p", _MARK, ";", "capture-pane", "-p", "-e", "-t", target]
            args.append(";")
        out = self.backend.tmux(*args[:-1], check=False).stdout
        chunks = out.split(_MARK + "\n")[1:]
        changed: dict[str, str] = {}
        for agent, chunk in zip(due, chunks, strict=False):
            pane = self._panes[agent]
            pane.captured_at = now
            self.captures += 1
            screen = ansi_to_html(_trim(chunk))
            if screen != pane.screen:
                pane.screen = screen
                changed[agent] = screen
        return changed


def _trim(screen: str) -> str:
    return "\n".join(line.rstrip() for line in screen.rstrip().split("\n"))


# -- colours ----------------------------------------------------------------------------

_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
_OTHER_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.")
_BASIC = ["0", "1", "2", "3", "4", "5", "6", "7"]


def _xterm256(n: int) -> str:
    if n < 16:
        return ""
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        return f"#{levels[n // 36]:02x}{levels[n // 6 % 6]:02x}{levels[n % 6]:02x}"
    grey = 8 + (n - 232) * 10
    return f"#{grey:02x}{grey:02x}{grey:02x}"


@dataclass
class _Style:
    fg: str | None = None
    bg: str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    reverse: bool = False

    def open(self) -> str:
        classes = []
        exact = []
        fg, bg = (self.bg, self.fg) if self.reverse else (self.fg, self.bg)
        for prefix, value in (("f", fg), ("b", bg)):
            if value is None:
                if self.reverse:
                    classes.append(f"{prefix}r")
            elif value.startswith("#"):
                # the page paints these (style attributes would break its CSP)
                exact.append(f'data-{prefix}g="{value}"')
            else:
                classes.append(prefix + value)
        for flag, name in (
            (self.bold, "bo"),
            (self.dim, "dm"),
            (self.italic, "it"),
            (self.underline, "ul"),
        ):
            if flag:
                classes.append(name)
        if not classes and not exact:
            return ""
        attrs = f' class="{" ".join(classes)}"' if classes else ""
        if exact:
            attrs += " " + " ".join(exact)
        return f"<span{attrs}>"


def _colour(params: list[int], i: int) -> tuple[str | None, int]:
    """A 38/48 extended colour starting at params[i] (the 5 or 2); returns it and the next index."""
    if i < len(params) and params[i] == 5 and i + 1 < len(params):
        n = params[i + 1]
        return (str(n) if n < 16 else _xterm256(n)), i + 2
    if i < len(params) and params[i] == 2 and i + 3 < len(params):
        r, g, b = params[i + 1 : i + 4]
        return f"#{r & 255:02x}{g & 255:02x}{b & 255:02x}", i + 4
    return None, len(params)


def _apply(style: _Style, raw: str) -> _Style:
    params = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", raw)] if raw else [0]
    i = 0
    while i < len(params):
        p = params[i]
        i += 1
        if p == 0:
            style = _Style()
        elif p == 1:
            style.bold = True
        elif p == 2:
            style.dim = True
        elif p == 3:
            style.italic = True
        elif p == 4:
            style.underline = True
        elif p == 7:
            style.reverse = True
        elif p == 22:
            style.bold = style.dim = False
        elif p == 23:
            style.italic = False
        elif p == 24:
            style.underline = False
        elif p == 27:
            style.reverse = False
        elif 30 <= p <= 37:
            style.fg = _BASIC[p - 30]
        elif 90 <= p <= 97:
            style.fg = str(p - 90 + 8)
        elif p == 39:
            style.fg = None
        elif 40 <= p <= 47:
            style.bg = _BASIC[p - 40]
        elif 100 <= p <= 107:
            style.bg = str(p - 100 + 8)
        elif p == 49:
            style.bg = None
        elif p in (38, 48):
            value, i = _colour(params, i)
            if p == 38:
                style.fg = value
            else:
                style.bg = value
    return style


def ansi_to_html(text: str) -> str:
    """A captured screen (SGR colour codes in it) as HTML spans; other escapes are dropped."""
    out: list[str] = []
    style = _Style()
    opened = ""
    pos = 0
    for match in _SGR.finditer(text):
        out.append(html.escape(_OTHER_ESCAPES.sub("", text[pos : match.start()]), quote=False))
        pos = match.end()
        style = _apply(style, match.group(1))
        tag = style.open()
        if opened:
            out.append("</span>")
        if tag:
            out.append(tag)
        opened = tag
    out.append(html.escape(_OTHER_ESCAPES.sub("", text[pos:]), quote=False))
    if opened:
        out.append("</span>")
    return "".join(out)


# -- interactive ------------------------------------------------------------------------


def _take_terminal() -> None:
    # In the child, after setsid(): make the pty its controlling terminal, so tmux
    # gets SIGWINCH when the browser's terminal is resized.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Attachment:
    """`tmux attach` to one session, on a pty owned by the command center."""

    def __init__(self, backend: TmuxBackend, session: str, cols: int, rows: int) -> None:
        self._master, slave = os.openpty()
        termios.tcsetwinsize(self._master, (rows, cols))
        try:
            self._proc = subprocess.Popen(
                [backend.binary, "-S", str(backend.path), "-u", "attach", "-t", f"={session}"],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env={"TERM": "xterm-256color", "LANG": "C.UTF-8"},
                start_new_session=True,
                preexec_fn=_take_terminal,
                close_fds=True,
            )
        except OSError:
            os.close(self._master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self._master, False)

    @property
    def fd(self) -> int:
        return self._master

    def read(self) -> bytes | None:
        """What the terminal wrote: None if nothing is waiting, b"" once it has closed."""
        try:
            return os.read(self._master, 65536)
        except BlockingIOError:
            return None
        except OSError:  # EIO: tmux detached or the session ended
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            view = view[written:]

    def resize(self, cols: int, rows: int) -> None:
        termios.tcsetwinsize(self._master, (max(2, rows), max(2, cols)))

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGHUP)
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._master)


async def output(attachment: Attachment) -> AsyncIterator[bytes]:
    """The pty's output as it comes, until the terminal closes."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(attachment.fd, ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            chunks: list[bytes] = []
            closed = False
            while (data := attachment.read()) is not None:
                if not data:
                    closed = True
                    break
                chunks.append(data)
            if chunks:
                yield b"".join(chunks)
            if closed:
                return
    finally:
        loop.remove_reader(attachment.fd)
