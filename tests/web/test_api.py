"""The command center's HTTP API, against a real `overnight up` on loopback.

Every test talks to a running lab over real HTTP: optuna agents trying knobs, and
(where a terminal matters) a `claude-code` agent in a real tmux session whose CLI
is the cheap stand-in from benchmarks/ speaking to a fake Anthropic provider
through the lab's gateway. Nothing is mocked. The browser tests
(tests/web/test_browser.py) run the same lab (tests/helpers/web.py).
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from overnight.org import load_org
from overnight.records import Event
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.web import Access, CommandCenter, Sources, serving
from tests.helpers.processes import run_cli
from tests.helpers.web import WebLab, toy_lab, web_lab

pytestmark = pytest.mark.usefixtures("front_end_files")

FINAL_KINDS = {f"trial.{s}" for s in ("kept", "discarded", "crashed", "timed_out", "rejected",
                                       "interrupted")}  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLab]:
    """One lab for the module's read-only checks (three agents, one in a terminal)."""
    with web_lab(tmp_path_factory.mktemp("web"), claude=True) as running:
        wait_until(lambda: len(running.events("trial.kept")) >= 2, timeout=90)
        yield running


@pytest.fixture
def client(lab: WebLab) -> Iterator[httpx.Client]:
    with lab.client() as c:
        yield c


# -- the token, the cookie, CSRF -----------------------------------------------------------


def test_the_url_is_printed_and_kept_in_a_private_file(lab: WebLab) -> None:
    path = lab.root / ".overnight" / "web.url"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lab.url.startswith("http://127.0.0.1:") and "/?token=" in lab.url


@pytest.mark.parametrize(
    "path",
    ["/", "/lab", "/providers", "/costs", "/events", "/static/app.js", "/lab/ledger",
     "/trials/1", "/agents/tuner-1/diff"],
)  # fmt: skip
def test_a_request_without_the_token_is_refused(lab: WebLab, path: str) -> None:
    r = httpx.get(lab.base + path, timeout=10)
    assert r.status_code == 401
    assert "web.url" in r.text and "?token=" in r.text  # it says how to get in


def test_a_wrong_token_or_a_forged_cookie_is_refused(lab: WebLab) -> None:
    assert httpx.get(f"{lab.base}/?token=nope", timeout=10).status_code == 401
    with lab.client() as client:
        ((name, value),) = client.cookies.items()
    sid, signature = value.split(".")
    last = "1" if signature.endswith("0") else "0"  # (a "forgery" equal to the real one passes)
    for forged in (f"{sid}x.{signature}", f"{sid}.{signature[:-1]}{last}", lab.token):
        r = httpx.get(lab.base + "/", cookies={name: forged}, timeout=10)
        assert r.status_code == 401
    assert httpx.get(lab.base + "/", cookies={name: value}, timeout=10).status_code == 200


def test_the_first_visit_sets_a_strict_httponly_cookie_and_drops_the_token(lab: WebLab) -> None:
    r = httpx.get(f"{lab.base}/lab?token={lab.token}", follow_redirects=False, timeout=10)
    assert r.status_code == 303
    assert r.headers["location"] == "/lab"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    name, value = cookie.split(";", 1)[0].split("=", 1)
    again = httpx.get(lab.base + "/lab", cookies={name: value}, timeout=10)
    assert again.status_code == 200 and "Ledger" in again.text


def test_a_post_without_or_with_a_stale_csrf_token_is_refused(
    lab: WebLab, client: httpx.Client
) -> None:
    r = client.post("/agents/tuner-1/pause")
    assert r.status_code == 403 and "CSRF" in r.text and "reload the page" in r.text
    r = client.post("/agents/tuner-1/pause", headers={"x-csrf-token": "0" * 40})
    assert r.status_code == 403 and "CSRF" in r.text
    # a CSRF token belongs to its session: another session's is stale here
    with lab.client() as other:
        theirs = lab.csrf(other)
    r = client.post("/agents/tuner-1/pause", headers={"x-csrf-token": theirs})
    assert r.status_code == 403
    assert lab.state("tuner-1") != "paused"


def test_a_cross_origin_post_is_refused_even_with_the_csrf_token(
    lab: WebLab, client: httpx.Client
) -> None:
    headers = {"x-csrf-token": lab.csrf(client), "origin": "http://evil.example"}
    r = client.post("/agents/tuner-1/pause", headers=headers)
    assert r.status_code == 403 and "Origin" in r.text


# -- pages and fragments -------------------------------------------------------------------


def test_every_page_renders_with_the_runs_agents(client: httpx.Client) -> None:
    grid = client.get("/")
    assert grid.status_code == 200
    for name in ("tuner-1", "tuner-2", "claude"):
        assert f'id="tile-{name}"' in grid.text
    assert 'id="screen-claude"' in grid.text  # a terminal mirror for the agent in tmux
    assert 'id="extra-tuner-1"' in grid.text  # its last trials for a built-in one
    lab_page = client.get("/lab")
    assert (
        lab_page.status_code == 200 and "<svg" in lab_page.text and 'id="trial-1"' in lab_page.text
    )
    providers = client.get("/providers")
    assert providers.status_code == 200 and "fake/claude-fake-1" in providers.text
    costs = client.get("/costs")
    assert costs.status_code == 200 and "today (UTC)" in costs.text  # the org's daily budget


def test_fragments(client: httpx.Client, lab: WebLab) -> None:
    tiles = client.get("/grid/tiles").text
    assert tiles.count('class="tile"') == 3
    kept = lab.events("trial.kept")[-1]
    # (the page's picture of the run follows the store within its tailer's next poll)
    wait_until(
        lambda: (
            f'id="trial-{kept.trial}"' in client.get("/lab/ledger", params={"status": "kept"}).text
        ),
        timeout=10,
    )
    rows = client.get("/lab/ledger", params={"status": "kept"}).text
    assert "discarded</span>" not in rows
    rows = client.get("/lab/ledger", params={"agent": "tuner-2"}).text
    assert "<td>tuner-1</td>" not in rows
    assert client.get("/lab/plot").text.startswith("<svg")
    assert "Best commit" in client.get("/lab/best").text
    best_diff = client.get("/lab/best-diff").text
    assert "exp.py" in best_diff and 'class="da"' in best_diff
    assert "route" in client.get("/providers/panel").text
    assert "Per agent" in client.get("/costs/panel").text


def test_a_trial_opens_with_its_diff_log_and_cost(client: httpx.Client, lab: WebLab) -> None:
    kept = next(e for e in lab.events("trial.kept") if e.agent != "baseline")
    r = client.get(f"/trials/{kept.trial}")
    assert r.status_code == 200
    assert "exp.py" in r.text and "log tail" in r.text and "kept" in r.text


def test_an_agents_worktree_diff(client: httpx.Client) -> None:
    r = client.get("/agents/tuner-1/diff")
    assert r.status_code == 200
    assert "its best commit" in r.text


def test_bad_input_gets_a_clear_error(client: httpx.Client) -> None:
    r = client.get("/agents/nobody/diff")
    assert r.status_code == 404
    assert "no agent named 'nobody'" in r.text and "tuner-1" in r.text  # names the real ones
    r = client.get("/trials/99999")
    assert r.status_code == 404 and "no trial 99999" in r.text
    r = client.get("/lab/ledger", params={"status": "great"})
    assert r.status_code == 400 and "kept" in r.text
    r = client.get("/lab/ledger", params={"agent": "nobody"})
    assert r.status_code == 404
    r = client.get("/events", params={"view": "everything"})
    assert r.status_code == 400 and "grid" in r.text


def test_steering_an_unknown_agent_or_action_is_a_404(lab: WebLab, client: httpx.Client) -> None:
    headers = {"x-csrf-token": lab.csrf(client)}
    r = client.post("/agents/nobody/pause", headers=headers)
    assert r.status_code == 404 and "no agent named 'nobody'" in r.text
    r = client.post("/agents/tuner-1/explode", headers=headers)
    assert r.status_code == 404 and "paused, resumed or restarted" in r.text


# -- the event stream ----------------------------------------------------------------------


def read_sse(
    response: httpx.Response, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Parse SSE messages from a streaming response until `until(messages)` holds."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if current:
                messages.append(current)
                current = {}
                if until(messages):
                    return messages
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        if key == "data":
            current["data"] = json.loads(value)
        elif key in ("event", "id", "retry"):
            current[key] = value
    return messages


def test_the_stream_sends_new_trials_and_catches_up_after_a_reconnect(
    lab: WebLab, client: httpx.Client
) -> None:
    def rows(messages: list[dict[str, Any]]) -> list[int]:
        return [m["data"]["number"] for m in messages if m.get("event") == "trial"]

    with client.stream("GET", "/events", params={"view": "lab"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = read_sse(r, lambda ms: any(m.get("event") == "status" for m in ms))
    last_id = int(next(m["id"] for m in reversed(first) if "id" in m))
    # while we are away, trials go on; coming back with Last-Event-ID replays what we missed
    wait_until(lambda: len(lab.events()) and lab.events()[-1].id > last_id + 10, timeout=60)
    missed = {e.trial for e in lab.events() if e.id > last_id and e.kind.startswith("trial.")}
    with client.stream("GET", "/events", params={"view": "lab"},
                       headers={"last-event-id": str(last_id)}) as r:  # fmt: skip
        again = read_sse(r, lambda ms: missed <= set(rows(ms)))
    assert missed <= set(rows(again))
    assert all(m.get("event") != "screen" for m in again)  # the lab page gets no terminals


def test_a_page_that_was_away_too_long_is_told_to_resync(client: httpx.Client) -> None:
    with client.stream("GET", "/events", params={"view": "grid", "after": "0"}) as r:
        messages = read_sse(r, lambda ms: any(m.get("event") == "status" for m in ms))
    kinds = [m.get("event") for m in messages]
    assert "resync" in kinds  # id 0 is older than the replay buffer: re-fetch, do not replay


def test_the_grid_stream_carries_agent_states_and_terminal_screens(
    lab: WebLab, client: httpx.Client
) -> None:
    with client.stream("GET", "/events", params={"view": "grid"}) as r:
        messages = read_sse(
            r,
            lambda ms: (
                {m.get("event") for m in ms} >= {"agent", "screen"}
                and any(m.get("event") == "screen" and m["data"]["agent"] == "claude" for m in ms)
            ),
        )
    screen = next(m["data"] for m in messages if m.get("event") == "screen")
    assert "[overnight]" in screen["html"]  # the agent process's own lines, from tmux


# -- the terminal websocket ----------------------------------------------------------------


def ws_connect(
    lab: WebLab, path: str, *, origin: str | None, cookie: bool, host: str | None = None
) -> tuple[int, bytes]:
    """A raw websocket handshake: (HTTP status, first bytes of the answer)."""
    address = lab.base.removeprefix("http://")
    headers = [
        f"GET {path} HTTP/1.1",
        f"Host: {host or address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        headers.append(f"Origin: {origin}")
    if cookie:
        with lab.client() as c:
            jar = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        headers.append(f"Cookie: {jar}")
    hostname, port = address.split(":")
    with socket.create_connection((hostname, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        data = bytearray()

        def answered() -> bool:  # the head of the answer, or the connection closed
            chunk = sock.recv(4096)
            data.extend(chunk)
            return not chunk or b"\r\n\r\n" in data

        wait_until(answered, timeout=10)
        with contextlib.suppress(OSError):
            sock.settimeout(2)
            data += sock.recv(4096)
    return int(data.split(b" ", 2)[1]), bytes(data)


def test_the_terminal_websocket_needs_the_cookie_and_this_origin(lab: WebLab) -> None:
    path = "/agents/claude/terminal?cols=80&rows=24"
    status, _ = ws_connect(lab, path, origin=lab.base, cookie=False)
    assert status == 403
    status, _ = ws_connect(lab, path, origin="http://evil.example", cookie=True)
    assert status == 403
    status, _ = ws_connect(lab, path, origin=lab.base, cookie=True)
    assert status == 101


def test_a_terminal_for_an_agent_without_one_says_why(lab: WebLab) -> None:
    status, data = ws_connect(lab, "/agents/tuner-1/terminal", origin=lab.base, cookie=True)
    assert status == 101 and b"no terminal" in data
    status, data = ws_connect(lab, "/agents/nobody/terminal", origin=lab.base, cookie=True)
    assert status == 101 and b"no agent named 'nobody'" in data


# -- what a browser is told: the Host allowlist and the protective headers ------------------


def port_of(lab: WebLab) -> int:
    return int(lab.base.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "host",
    # 127.0.0.2 is loopback too, but not a name it answers to unless started with --host
    ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.2:{port}", ""],
)
def test_a_forged_host_is_refused_even_with_the_cookie(
    lab: WebLab, client: httpx.Client, host: str
) -> None:
    """DNS rebinding: a page of another site, its name re-pointed at 127.0.0.1 (or no name)."""
    forged = host.format(port=port_of(lab))
    for path in ("/", "/lab", "/events", "/static/app.js", f"/?token={lab.token}"):
        r = client.get(path, headers={"host": forged})
        assert r.status_code == 421 and "DNS rebinding" in r.text and "--host" in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    r = client.post(
        "/agents/tuner-1/pause", headers={"host": forged, "x-csrf-token": lab.csrf(client)}
    )
    assert r.status_code == 421
    assert lab.state("tuner-1") != "paused"


def test_a_websocket_with_a_forged_host_is_refused(lab: WebLab) -> None:
    path = "/agents/claude/terminal?cols=80&rows=24"
    forged = f"evil.example:{port_of(lab)}"
    status, data = ws_connect(lab, path, origin=f"http://{forged}", cookie=True, host=forged)
    assert status == 421 and b"DNS rebinding" in data


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
def test_the_loopback_names_are_answered_on_any_port(
    lab: WebLab, client: httpx.Client, name: str
) -> None:
    # any port: `ssh -L 8080:127.0.0.1:PORT` brings the page to another one
    for host in (f"{name}:{port_of(lab)}", f"{name}:8080", name):
        r = client.get("/lab", headers={"host": host})
        assert r.status_code == 200, (host, r.text)


def test_every_answer_carries_the_protective_headers(lab: WebLab, client: httpx.Client) -> None:
    answers = {
        "page": client.get("/"),
        "fragment": client.get("/grid/tiles"),
        "static": client.get("/static/app.js"),
        "no token": httpx.get(lab.base + "/lab", timeout=10),
        "first visit": httpx.get(f"{lab.base}/?token={lab.token}", timeout=10),
        "not found": client.get("/trials/99999"),
    }
    with client.stream("GET", "/events", params={"view": "lab"}) as stream:
        answers["event stream"] = stream
    assert answers["no token"].status_code == 401 and answers["first visit"].status_code == 303
    for what, r in answers.items():
        csp = r.headers.get("content-security-policy", "")
        directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";"))
        assert directives.get("frame-ancestors") == "'none'", what
        assert directives.get("script-src") == "'self'", what  # no inline script, no eval
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, what
        assert r.headers.get("x-frame-options") == "DENY", what
        assert r.headers.get("referrer-policy") == "no-referrer", what
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert len(r.headers.get_list("content-security-policy")) == 1, what
    # the page's style nonce is new on every answer, and handed to its script alone
    page = answers["page"]
    nonce = page.headers["content-security-policy"].split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script src="/static/app.js" nonce="{nonce}" defer>' in page.text
    assert page.text.count(nonce) == 1
    again = client.get("/").headers["content-security-policy"]
    assert f"'nonce-{nonce}'" not in again


def test_with_host_the_command_center_answers_to_that_name_too(tmp_path: Path) -> None:
    with web_lab(tmp_path, extra_args=("--host", "127.0.0.2")) as lab, lab.client() as client:
        assert lab.base.startswith("http://127.0.0.2:")
        assert client.get("/lab").status_code == 200
        assert client.get("/lab", headers={"host": "localhost"}).status_code == 200
        assert client.get("/lab", headers={"host": "evil.example"}).status_code == 421


# -- steering ------------------------------------------------------------------------------


def test_pause_resume_and_restart_a_built_in_agent(tmp_path: Path) -> None:
    with web_lab(tmp_path, sleep=2.0) as lab, lab.client() as client:
        headers = {"x-csrf-token": lab.csrf(client)}

        def finished(agent: str) -> list[Event]:
            return [e for e in lab.events() if e.agent == agent and e.kind in FINAL_KINDS]

        def proposed(agent: str) -> int:
            return len([e for e in lab.events("trial.proposed") if e.agent == agent])

        wait_until(lambda: lab.state("tuner-1") == "working", timeout=60)
        assert client.post("/agents/tuner-1/pause", headers=headers).status_code == 204
        # it finishes the trial it is in, then holds
        wait_until(lambda: lab.state("tuner-1") == "paused", timeout=60)
        held_at, others = proposed("tuner-1"), len(finished("tuner-2"))
        r = client.post("/agents/tuner-1/pause", headers=headers)
        assert r.status_code == 409 and "already paused" in r.text
        assert "/agents/tuner-1/resume" in client.get("/grid/tiles").text
        wait_until(lambda: len(finished("tuner-2")) >= others + 2, timeout=60)
        assert proposed("tuner-1") == held_at  # the other agent went on; this one held
        assert client.post("/agents/tuner-1/resume", headers=headers).status_code == 204
        wait_until(lambda: proposed("tuner-1") > held_at, timeout=30)
        r = client.post("/agents/tuner-1/resume", headers=headers)
        assert r.status_code == 409 and "not paused" in r.text

        # restart: the running experiment is stopped (interrupted), and the agent goes on
        def running() -> int | None:
            mine = [e for e in lab.events() if e.agent == "tuner-1" and e.kind.startswith("trial.")]
            return mine[-1].trial if mine and mine[-1].kind == "trial.running" else None

        wait_until(lambda: running() is not None, timeout=30)
        number = running()
        assert client.post("/agents/tuner-1/restart", headers=headers).status_code == 204
        wait_until(lambda: any(e.trial == number for e in finished("tuner-1")), timeout=30)
        (end,) = [e for e in finished("tuner-1") if e.trial == number]
        assert end.kind == "trial.interrupted"  # 2 s of sleep: it was cut, not finished
        wait_until(lambda: lab.events("agent.restarted") != [], timeout=30)
        assert lab.events("agent.restarted")[-1].payload["by"] == "request"
        assert number is not None
        wait_until(  # its loop started over
            lambda: any(e.agent == "tuner-1" and (e.trial or 0) > number
                        for e in lab.events("trial.proposed")),
            timeout=30,
        )  # fmt: skip


def test_pause_and_resume_an_agent_in_a_terminal(tmp_path: Path) -> None:
    with web_lab(tmp_path, claude=True, idle_after="1s") as lab, lab.client() as client:
        headers = {"x-csrf-token": lab.csrf(client)}
        assert lab.fake is not None
        fake = lab.fake
        # idle between turns: it has made a request (`idle` is also its state before it starts)
        wait_until(lambda: bool(fake.requests) and lab.state("claude") == "idle", timeout=60)
        assert client.post("/agents/claude/pause", headers=headers).status_code == 204
        wait_until(lambda: lab.state("claude") == "paused", timeout=30)
        turns = len(fake.requests)
        nudges = len(lab.events("agent.nudged"))
        # idle_after is 1 s: unpaused it would have been nudged into new turns by now
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: len(lab.events("agent.nudged")) > nudges, timeout=4)
        assert len(lab.events("agent.nudged")) == nudges
        assert client.post("/agents/claude/resume", headers=headers).status_code == 204
        try:
            wait_until(lambda: len(fake.requests) > turns, timeout=60)  # its turns go on
        except TimeoutError:
            pytest.fail(f"no request within 60 s of the resume\n{agent_story(lab, 'claude')}")
        # restart: a new terminal session, and the conversation resumes
        assert client.post("/agents/claude/restart", headers=headers).status_code == 204
        wait_until(lambda: lab.events("agent.restarted") != [], timeout=30)
        assert lab.events("agent.restarted")[-1].payload["by"] == "request"


def agent_story(lab: WebLab, agent: str) -> str:
    """What a failure needs to say: the agent's state, its events and its terminal's end."""
    events = "\n".join(
        f"  {e.kind} {json.dumps(e.payload)}" for e in lab.events() if e.agent == agent
    )
    sessions = [e.payload["session"] for e in lab.events("agent.started") if e.agent == agent]
    screen = ""
    if sessions and lab.tmux_socket is not None:
        screen = subprocess.run(
            ["tmux", "-S", str(lab.tmux_socket), "capture-pane", "-p", "-J", "-S", "-40",
             "-t", f"={sessions[0]}:"], capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    return f"state {lab.state(agent)}\nevents:\n{events}\nterminal:\n{screen}"


# -- serving -------------------------------------------------------------------------------


def test_no_ui_serves_nothing(tmp_path: Path) -> None:
    root = toy_lab(tmp_path / "lab")
    r = run_cli("run", str(root), "--trials", "2", "--no-ui", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "command center" not in r.stdout
    assert not (root / ".overnight" / "web.url").exists()


def test_run_prints_the_url_and_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    root = toy_lab(tmp_path / "lab")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("run", str(root), "--trials", "1", "--port", str(port), timeout=120)
    assert r.returncode == 2
    assert "--port" in r.stderr and "fix:" in r.stderr
    r = run_cli("run", str(root), "--trials", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "command center: http://127.0.0.1:" in r.stdout and "/?token=" in r.stdout
    assert not (root / ".overnight" / "web.url").exists()  # gone with the server


def test_later_views_slot_in_with_the_same_auth_and_nav(tmp_path: Path) -> None:
    """What the approvals inbox and the audit view will use: a router, a nav entry, pages
    in the base template, and public paths for endpoints that check their callers' keys."""
    root = toy_lab(tmp_path / "lab")
    org = load_org(root)
    store = open_store(store_url(root))
    run = store.create_run("r1", "toy", "0" * 40, {}, {})
    router = APIRouter()
    center: CommandCenter | None = None

    @router.get("/approvals", response_class=HTMLResponse)
    def approvals(request: Request) -> str:
        assert center is not None
        body = Markup("<p>the inbox</p>")
        return center.page(request, "page.html", "approvals", "Approvals", body=body)

    @router.post("/hooks/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    sources = Sources(store=store, run=run, config=org.config, root=root, state_dir=tmp_path)
    center = CommandCenter(
        sources,
        Access.for_lab(root),
        extra_routers=[router],
        extra_nav=[("/approvals", "Approvals", "approvals")],
        public_prefixes=["/hooks/"],
    )
    try:
        with serving(center) as served:
            token = served.url.split("token=")[1]
            assert httpx.get(served.base + "/approvals").status_code == 401
            assert httpx.post(served.base + "/hooks/ping").json() == {"pong": "yes"}
            with httpx.Client(base_url=served.base) as client:
                client.get(f"/approvals?token={token}")
                page = client.get("/approvals").text
                assert 'href="/approvals" aria-current="page"' in page and "the inbox" in page
                assert 'href="/lab"' in page  # the same nav, the same live status line
    finally:
        store.close()
