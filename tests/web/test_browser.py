"""The command center in a real browser: Debian's chromium, headless, driven by Playwright.

Against a running lab (`overnight up`, see tests/helpers/web.py): two optuna agents
and a `claude-code` agent in a real tmux session. Screenshots are saved in
test-artifacts/ (the README's picture is one of them).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from overnight.sessions import wait_until
from tests.helpers.web import ARTIFACTS, WebLab, shot, web_lab

pytestmark = pytest.mark.usefixtures("front_end_files")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLab]:
    with web_lab(tmp_path_factory.mktemp("browser"), claude=True, sleep=0.5, tuners=3) as running:
        wait_until(lambda: len(running.events("trial.kept")) >= 3, timeout=90)
        yield running


def open_grid(page: Page, lab: WebLab) -> None:
    page.goto(lab.url)
    assert page.url == lab.base + "/"  # the token is gone from the address bar
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    page.evaluate("window.__loaded = performance.timeOrigin")


def no_reload(page: Page) -> bool:
    return bool(page.evaluate("window.__loaded === performance.timeOrigin"))


@contextlib.contextmanager
def another_site(html: str) -> Iterator[str]:
    """A page of another origin on this machine (127.0.0.1, another port), for the block.
    (Chromium would not even let a public site's page reach 127.0.0.1: its local network
    access checks block the request before our headers could.)"""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="another-site", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_another_site_cannot_frame_the_command_center(
    browser: Browser, lab: WebLab
) -> None:
    """Clickjacking: another page puts the command center in a frame, under its own bait.
    The browser is signed in (the same site: its cookie would go along), and one frame
    even carries the token, as a leaked link would."""
    context = browser.new_context()
    try:
        signed_in = context.new_page()
        signed_in.goto(lab.url)
        signed_in.wait_for_selector("#grid")  # the command center works in a tab of its own
        frames = f'<iframe src="{lab.base}/approvals"></iframe><iframe src="{lab.url}"></iframe>'
        with another_site(f"<h1>click to win</h1>{frames}") as site:
            p = context.new_page()
            refused: list[str] = []
            p.on(
                "console", lambda m: refused.append(m.text) if "frame-ancestors" in m.text else None
            )
            p.goto(site)  # returns once the page and its frames have loaded
            inner = p.frames[1:]
            assert len(inner) == 2
            for frame in inner:  # the browser's own error page, never ours
                assert frame.url == "chrome-error://chromewebdata/"
                assert "ERR_BLOCKED_BY_RESPONSE" in frame.content()
            assert len(refused) == 2 and all("Framing 'http://127.0.0.1:" in m for m in refused)
    finally:
        context.close()


def test_a_request_without_the_token_is_refused(browser: Browser, lab: WebLab) -> None:
    context = browser.new_context()
    try:
        p = context.new_page()
        response = p.goto(lab.base + "/")
        assert response is not None and response.status == 401
        assert "web.url" in p.content()
    finally:
        context.close()


def test_the_grid_shows_every_agent_live_with_its_terminal_mirror(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    names = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.agent)")
    assert sorted(names) == ["claude", "tuner-1", "tuner-2", "tuner-3"]
    # its tile follows the agent live: paused and resumed from the tile's own buttons.
    # (Not by sampling idle/working: a turn on the fake can be shorter than a sample, and
    # the page only ever saw "idle".)
    page.locator("#head-claude button", has_text="pause").click()
    page.wait_for_function(
        "() => document.getElementById('tile-claude').dataset.state === 'paused'", timeout=30_000
    )
    page.locator("#head-claude button", has_text="resume").click()
    page.wait_for_function(
        "() => document.getElementById('tile-claude').dataset.state !== 'paused'", timeout=30_000
    )
    # its terminal is mirrored, and the mirror moves on as the agent writes
    screen = page.locator("#screen-claude")
    page.wait_for_function(
        "() => document.getElementById('screen-claude').textContent.includes('[overnight] turn')"
    )
    turns = re.findall(r"turn (\d+)", screen.text_content() or "")
    page.wait_for_function(
        f"""() => {{
            const m = [...document.getElementById('screen-claude').textContent
                .matchAll(/turn (\\d+)/g)].map(x => +x[1]);
            return m.length && Math.max(...m) > {max(map(int, turns), default=0)};
        }}""",
        timeout=30_000,
    )
    # the built-in agents show their last trials instead
    page.wait_for_function("() => document.querySelectorAll('#extra-tuner-1 .recent li.st-kept, "
                           "#extra-tuner-1 .recent li.st-discarded').length > 0")  # fmt: skip
    assert no_reload(page)
    shot(page, "grid")
    # the README's picture: the four tiles in one row
    page.set_viewport_size({"width": 1760, "height": 1000})
    page.wait_for_function(  # laid out again: the tiles in one row
        "() => new Set([...document.querySelectorAll('#grid .tile')]"
        ".map(t => t.getBoundingClientRect().top)).size === 1"
    )
    bottom = page.eval_on_selector("#grid", "g => g.getBoundingClientRect().bottom")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(
        path=str(ARTIFACTS / "command-center.png"),
        clip={"x": 0, "y": 0, "width": 1760, "height": bottom + 12},
    )


def test_a_mirrored_screen_shows_its_exact_colours(page: Page, lab: WebLab) -> None:
    """24-bit colours reach the tile's mirror as data (the page's policy refuses style
    attributes) and are painted by the page."""
    open_grid(page, lab)
    (session,) = [
        n for n in tmux(lab, "list-sessions", "-F", "#{session_name}").split() if "claude" in n
    ]
    # a window of its own becomes the session's active one: the mirror shows it
    tmux(lab, "new-window", "-t", f"={session}:", "-n", "colours",
         "printf '\\033[38;2;255;128;0mORANGE\\033[0m\\n'; exec sleep 600")  # fmt: skip
    try:
        page.wait_for_selector("#screen-claude [data-fg='#ff8000']", timeout=20_000)
        colour = page.eval_on_selector(
            "#screen-claude [data-fg='#ff8000']", "el => getComputedStyle(el).color"
        )
        assert colour == "rgb(255, 128, 0)"
    finally:
        tmux(lab, "kill-window", "-t", f"={session}:colours")


def test_pause_and_resume_from_the_tile(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    page.click("#head-tuner-1 button:text('pause')")
    page.wait_for_function("() => document.getElementById('tile-tuner-1')"
                           ".dataset.state === 'paused'", timeout=30_000)  # fmt: skip
    assert lab.state("tuner-1") == "paused"
    shot(page, "paused-tile")
    page.click("#head-tuner-1 button:text('resume')")
    page.wait_for_function("() => document.getElementById('tile-tuner-1')"
                           ".dataset.state === 'working'", timeout=30_000)  # fmt: skip
    assert no_reload(page)


def test_a_refused_action_shows_why(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    # a second tab resumed the agent already: this page's "resume" is stale
    page.click("#head-tuner-2 button:text('pause')")
    page.wait_for_function("() => document.getElementById('tile-tuner-2')"
                           ".dataset.state === 'paused'", timeout=30_000)  # fmt: skip
    with lab.client() as client:
        r = client.post("/agents/tuner-2/resume", headers={"x-csrf-token": lab.csrf(client)})
        assert r.status_code == 204
    page.evaluate("htmx.ajax('POST', '/agents/tuner-2/resume', {swap: 'none'})")
    page.wait_for_selector("#toast:not([hidden])")
    assert "not paused" in (page.text_content("#toast") or "")


def test_hiding_and_showing_a_tile_sticks_after_a_reload(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    page.click("#head-tuner-2 [data-hide]")
    assert not page.is_visible("#tile-tuner-2")
    page.reload()
    page.wait_for_selector("#tile-tuner-1")
    assert not page.is_visible("#tile-tuner-2")
    assert page.is_visible("#tile-tuner-1") and page.is_visible("#tile-claude")
    page.click("[data-show='tuner-2']")
    assert page.is_visible("#tile-tuner-2")
    page.reload()
    page.wait_for_selector("#tile-tuner-2")
    assert page.is_visible("#tile-tuner-2")
    assert page.is_hidden("#hidden-tray")


def test_filter_by_state_and_tile_size(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    page.click("[data-filter='crashed']")
    assert page.eval_on_selector_all(".tile", "ts => ts.filter(t => t.offsetParent).length") == 0
    page.click("[data-filter='all']")
    width = page.eval_on_selector("#tile-tuner-1", "t => t.getBoundingClientRect().width")
    page.click("[data-size='l']")
    wider = page.eval_on_selector("#tile-tuner-1", "t => t.getBoundingClientRect().width")
    assert wider > width
    page.reload()
    page.wait_for_selector("#tile-tuner-1")
    assert page.get_attribute("#grid", "data-size") == "l"  # remembered too
    page.click("[data-size='m']")


def test_the_worktree_diff_opens_from_the_tile(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    page.click("#head-tuner-1 button:text('diff')")
    page.wait_for_selector("#panel[open] #panel-body :text('its best commit')")
    assert "tuner-1" in (page.text_content("#panel-title") or "")


def tmux(lab: WebLab, *args: str) -> str:
    """A tmux command on the lab's own tmux server."""
    assert lab.tmux_socket is not None
    return subprocess.run(
        ["tmux", "-S", str(lab.tmux_socket), *args], capture_output=True, text=True, check=True
    ).stdout


def terminal_text(page: Page) -> str:
    return str(
        page.evaluate(
            """(() => {
                const t = window.overnightTerminal; if (!t) return '';
                const b = t.buffer.active; const out = [];  // the screen, not the scrollback
                for (let i = b.viewportY; i < b.viewportY + t.rows; i++) {
                    const line = b.getLine(i); if (line) out.push(line.translateToString(true));
                }
                return out.join('\\n');
            })()"""
        )
    )


def test_the_interactive_terminal_runs_a_typed_command(page: Page, lab: WebLab) -> None:
    open_grid(page, lab)
    page.click("#head-claude button:text('terminal')")
    wait_until(lambda: "[overnight]" in terminal_text(page), timeout=20)  # attached to tmux
    (session,) = [
        n for n in tmux(lab, "list-sessions", "-F", "#{session_name}").split() if "claude" in n
    ]
    # tmux's own keys: a new window holds a shell in the agent's worktree; what is typed
    # once tmux shows that window goes to its shell
    page.keyboard.press("Control+b")
    page.keyboard.press("c")
    windows = ["list-windows", "-t", f"={session}", "-F", "#{window_index}:#{window_active}"]
    wait_until(lambda: "1:1" in tmux(lab, *windows).split(), timeout=20)
    page.keyboard.type("echo $((6*7)) $(basename $(pwd))\n")
    wait_until(lambda: "42 claude" in terminal_text(page), timeout=20)
    shot(page, "terminal")
    page.keyboard.type("exit\n")
    # Back to the agent's window, as Ctrl-b & would (tmux's own keys are tmux's to test):
    # the shell's window is killed once the shell has exited, and the page follows.
    wait_until(
        lambda: (
            tmux(lab, "display-message", "-p", "-t", f"={session}:1", "#{pane_dead}").strip() == "1"
        ),
        timeout=20,
    )
    tmux(lab, "kill-window", "-t", f"={session}:1")
    wait_until(lambda: "42 claude" not in terminal_text(page), timeout=10)  # window 0 again
    page.click("#panel [data-close]")
    page.wait_for_function("() => window.overnightTerminal === null")  # closing the panel detaches


def test_a_new_ledger_row_appears_without_a_reload(page: Page, lab: WebLab) -> None:
    page.goto(lab.url.replace("/?token", "/lab?token"))
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    page.evaluate("window.__loaded = performance.timeOrigin")
    first = page.eval_on_selector("#ledger-body tr.trial", "r => +r.id.slice(6)")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#ledger-body tr.trial')]"
        f".some(r => +r.id.slice(6) > {first} + 1 && !r.dataset.status.match(/proposed|applied|checked|running/))",
        timeout=30_000,
    )
    assert no_reload(page)
    page.click(f"#trial-{first}")  # a row opens the trial: its diff, log tail and cost
    page.wait_for_selector("#panel[open] h3:text('log tail')")
    assert f"trial {first}" in (page.text_content("#panel-title") or "")
    page.click("#panel [data-close]")
    records = page.eval_on_selector_all("#plot circle.record", "cs => cs.length")
    assert records >= 2  # the baseline, then at least one new best
    assert page.get_attribute("#plot path.kept", "d")
    shot(page, "lab")


class CuttableLink:
    """A TCP relay to the command center whose connections the test can cut, as a flaky
    network or a laptop going to sleep would: the browser's stream breaks and reconnects."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.down = threading.Event()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            with self.lock:
                self.open.discard(s)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_the_page_catches_up_after_losing_its_connection(page: Page, lab: WebLab) -> None:
    link = CuttableLink(lab.base)
    try:
        page.goto(f"{link.base}/lab?token={lab.token}")
        page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
        page.evaluate("window.__loaded = performance.timeOrigin")
        link.cut()
        page.wait_for_function("() => document.getElementById('conn').dataset.state === 'lost'")
        last = lab.events()[-1].id

        def missed() -> list[int]:
            kinds = ("trial.kept", "trial.discarded")
            return sorted({e.trial or 0 for e in lab.events() if e.id > last and e.kind in kinds})

        wait_until(lambda: len(missed()) >= 3, timeout=60)  # trials go on while we are away
        assert not page.query_selector(f"#trial-{missed()[-1]}.st-{'kept'}")
        link.restore()  # the browser reconnects by itself, with Last-Event-ID
        page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'",
                               timeout=30_000)  # fmt: skip
        for number in missed():
            page.wait_for_selector(
                f"#trial-{number}.st-kept, #trial-{number}.st-discarded", timeout=10_000
            )
        assert no_reload(page)
    finally:
        link.close()


def test_the_providers_and_costs_views(page: Page, lab: WebLab) -> None:
    page.goto(lab.url.replace("/?token", "/providers?token"))
    page.wait_for_selector("text=fake/claude-fake-1")
    assert page.is_visible("#timeline svg")
    shot(page, "providers")
    page.click("nav >> text=Costs")
    page.wait_for_selector("text=Per agent")
    assert page.is_visible("text=today (UTC)")
    shot(page, "costs")
