"""The command center's approvals inbox, its REST API and the audit view, against a real lab.

`overnight up` runs a toy lab with an optuna `tuner` and an optuna `careful` agent
whose autonomy is `ready`: every change it would keep waits for a human. The
API is driven over real HTTP; the pages in Debian's chromium (Playwright), with
the browser fixtures of tests/web/conftest.py. Approvals the tests need on
cue (one that expires, one that arrives while the page is open) are filed
through the lab's own `Approvals` on the lab's store, as a hook's review would.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from overnight.governance.approvals import Approvals
from overnight.records import Approval
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from tests.helpers.web import WebLab, shot, web_lab

pytestmark = pytest.mark.usefixtures("front_end_files")

CAREFUL = {"name": "careful", "autonomy": "ready"}
SHELL = {"kind": "shell", "command": "pip install requests", "agent": "tuner"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLab]:
    with web_lab(tmp_path_factory.mktemp("governed"), tuners=1, others=[CAREFUL]) as running:
        yield running


@pytest.fixture
def client(lab: WebLab) -> Iterator[httpx.Client]:
    with lab.client() as c:
        c.headers["x-csrf-token"] = c.get("/api/csrf").json()["csrf_token"]
        yield c


def file_approval(lab: WebLab, timeout: float = 3600, agent: str = "tuner") -> Approval:
    """An approval filed on the lab's store from outside the command center, as a hook's
    review would be (nobody blocks on it)."""
    store = open_store(store_url(lab.root))
    try:
        run = store.latest_run("toy")
        assert run is not None
        return Approvals(store, "toy").request(
            run.id, agent, {**SHELL, "agent": agent}, "network installs need a person",
            risk=0.62, timeout=timeout,
        )  # fmt: skip
    finally:
        store.close()


def careful_pending(client: httpx.Client) -> dict[str, Any]:
    """The next approval the `careful` agent waits on (it finds an improvement soon)."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [
            a for a in client.get("/api/approvals?status=pending").json()["approvals"]
            if a["agent"] == "careful"
        ]  # fmt: skip
        return bool(found)

    wait_until(ready, timeout=120)
    return found[0]


def trial_status(lab: WebLab, number: int) -> str | None:
    finals = [e.kind for e in lab.events() if e.trial == number and e.kind.startswith("trial.")]
    return finals[-1].removeprefix("trial.") if finals else None


def answer(client: httpx.Client, approval_id: str, verb: str, body: Any = None) -> httpx.Response:
    content = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    return client.post(
        f"/api/approvals/{approval_id}/{verb}", content=content,
        headers={"content-type": "application/json"},
    )  # fmt: skip


# -- the REST API -----------------------------------------------------------------------------


def test_the_api_lists_shows_and_answers_an_approval(lab: WebLab, client: httpx.Client) -> None:
    filed = file_approval(lab)
    pending = client.get("/api/approvals", params={"status": "pending"}).json()["approvals"]
    mine = next(a for a in pending if a["id"] == filed.id)
    assert mine["agent"] == "tuner" and mine["status"] == "pending"
    assert mine["summary"] == "shell: pip install requests"
    assert mine["reason"] == "network installs need a person" and mine["risk"] == 0.62
    assert mine["expires_at"] > mine["created_at"]
    assert client.get(f"/api/approvals/{filed.id.upper()}").json() == mine  # ids are typed loosely

    r = answer(client, filed.id, "approve", {"note": "ok for tonight"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert r.json()["answered_by"] == "web" and r.json()["note"] == "ok for tonight"
    assert client.get(f"/api/approvals/{filed.id}").json()["status"] == "approved"
    assert filed.id not in {a["id"] for a in client.get("/api/approvals?status=pending").json()
                            ["approvals"]}  # fmt: skip
    assert filed.id in {a["id"] for a in client.get("/api/approvals?status=approved").json()
                        ["approvals"]}  # fmt: skip

    again = answer(client, filed.id, "deny", {"note": "changed my mind"})
    assert again.status_code == 409
    assert f"approval {filed.id} was already approved by web at" in again.json()["error"]
    assert "cannot be changed" in again.json()["error"]

    # the answer is on the audit chain, by "web", with its note
    records = client.get("/audit/records", params={"kind": "approval.approved", "actor": "web"})
    assert f"approval {filed.id}" in records.text and "ok for tonight" in records.text


def test_bad_requests_get_clear_errors(lab: WebLab, client: httpx.Client) -> None:
    filed = file_approval(lab)
    unknown = answer(client, "zzzzzz", "approve", {"note": "x"})
    assert unknown.status_code == 404 and "no approval 'zzzzzz'" in unknown.json()["error"]
    assert client.get("/api/approvals/zzzzzz").status_code == 404
    bad_status = client.get("/api/approvals", params={"status": "maybe"})
    assert bad_status.status_code == 400
    assert "pending, approved, denied, expired" in bad_status.json()["error"]
    verb = answer(client, filed.id, "ignore")
    assert verb.status_code == 404 and "approve or deny" in verb.json()["error"]
    for body, says in [
        (b"note=ok", "not JSON"),
        ([1, 2], "must be a JSON object"),
        ({"note": 5}, "`note` must be a string"),
        ({"note": "ok", "by": "tuner"}, "unknown field(s) by"),
        ({"note": "x" * 2001}, "keep it under 2000"),
    ]:
        r = answer(client, filed.id, "approve", body)
        assert r.status_code == 400 and says in r.json()["error"], (body, r.text)
    # a stale CSRF token, or none, and no cookie at all
    stale = client.post(f"/api/approvals/{filed.id}/approve", headers={"x-csrf-token": "old"})
    assert stale.status_code == 403 and "CSRF" in stale.text
    assert httpx.get(f"{lab.base}/api/approvals").status_code == 401
    assert httpx.post(f"{lab.base}/api/approvals/{filed.id}/approve").status_code == 401
    # none of it answered the approval; an empty body answers without a note
    assert client.get(f"/api/approvals/{filed.id}").json()["status"] == "pending"
    denied = answer(client, filed.id, "deny")
    assert denied.status_code == 200 and denied.json()["note"] is None


def test_an_expired_approval_cannot_be_answered(lab: WebLab, client: httpx.Client) -> None:
    filed = file_approval(lab, timeout=1.0)
    wait_until(
        lambda: client.get(f"/api/approvals/{filed.id}").json()["status"] == "expired", timeout=30
    )
    late = answer(client, filed.id, "approve", {"note": "sorry, late"})
    assert late.status_code == 409
    error = late.json()["error"]
    assert f"approval {filed.id} expired at" in error and "can no longer be approved" in error
    expired = client.get("/api/approvals?status=expired").json()["approvals"]
    assert filed.id in {a["id"] for a in expired}  # expired, not denied
    assert client.get(f"/api/approvals/{filed.id}").json()["answered_by"] is None


AS_AGENT = textwrap.dedent(
    """
    import json, sys, httpx
    from websockets.sync.client import connect
    from websockets.exceptions import ConnectionClosed
    url, approval = sys.argv[1], sys.argv[2]
    base, token = url.split("/?token=")
    with httpx.Client(base_url=base) as c:
        c.get("/?token=" + token)  # it found the token: the cookie is as good as the user's
        csrf = c.get("/api/csrf").json()["csrf_token"]
        r = c.post(f"/api/approvals/{approval}/approve", json={"note": "me"},
                   headers={"x-csrf-token": csrf})
        steer = c.post("/agents/careful/pause", headers={"x-csrf-token": csrf})
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    ws_url = base.replace("http://", "ws://") + "/agents/careful/terminal"
    with connect(ws_url, additional_headers={"cookie": cookie, "origin": base}) as ws:
        said = ws.recv(timeout=30)
        try:
            ws.recv(timeout=30)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    print(json.dumps({"status": r.status_code, "body": r.json(),
                      "steer": [steer.status_code, steer.text],
                      "terminal": [code, said]}))
    """
)


def test_no_agent_can_answer_even_with_the_token(lab: WebLab, client: httpx.Client) -> None:
    """The web token is never given to an agent; one that finds it anyway (it is in the
    lab's .overnight/web.url) is still refused: the command center looks at who calls."""
    filed = file_approval(lab)
    worktree = next((lab.root / ".overnight" / "worktrees").glob("*/careful"))
    env = {k: v for k, v in lab.env.items() if not k.startswith("OVERNIGHT_")}
    attempts = {
        "an experiment": ({**env, "OVERNIGHT_TRIAL": "7", "OVERNIGHT_AGENT": "tuner"}, None, ""),
        "an agent's worktree": (env, worktree, "inside an agent's worktree"),
        # a shell that drops the variable still runs under the session that set it
        "a child of a session": ({**env, "OVERNIGHT_SESSION": "overnight-toy-careful"}, None,
                                 "belongs to an agent's session"),
    }  # fmt: skip
    for what, (environ, cwd, says) in attempts.items():
        command = [sys.executable, "-c", AS_AGENT, lab.url, filed.id]
        if "OVERNIGHT_SESSION" in environ:
            command = ["sh", "-c", f"env -u OVERNIGHT_SESSION {shlex.join(command)}"]
        done = subprocess.run(
            command, env=environ, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (what, done.stderr)
        reply = json.loads(done.stdout)
        assert reply["status"] == 403, (what, reply)
        assert "no agent can answer an approval" in reply["body"]["error"], what
        assert says in reply["body"]["error"], (what, reply)
        status, body = reply["steer"]
        assert status == 403 and "no agent can steer agents" in body, (what, reply)
        code, said = reply["terminal"]
        assert code == 4403 and "no agent can use an agent's terminal" in said, (what, reply)
    assert client.get(f"/api/approvals/{filed.id}").json()["status"] == "pending"


def test_the_agents_hook_endpoints_are_not_in_the_web_app(
    lab: WebLab, client: httpx.Client
) -> None:
    """Hooks and `overnight try` talk to the gateway with their virtual key; the web app
    serves none of their paths, and every path of it needs the user's cookie."""
    for path in ("/overnight/v1/hook", "/overnight/v1/judge", "/hooks/pre-tool-use"):
        assert httpx.post(lab.base + path, json={}).status_code == 401
        assert client.post(path, json={}).status_code == 404
    assert httpx.get(f"{lab.base}/overnight/v1/approvals/abc").status_code == 401


# -- the audit view ---------------------------------------------------------------------------


def records_of(html: str) -> list[tuple[int, str]]:
    return [
        (int(seq), kind) for seq, kind in re.findall(r'data-seq="(\d+)" data-kind="([^"]+)"', html)
    ]


def test_audit_search_filters_and_pages_newest_first(lab: WebLab, client: httpx.Client) -> None:
    seqs: list[int] = []
    older: list[tuple[int, str]] = []

    def two_pages() -> bool:
        """The first page and the next, once the lab has written more than a page (the run
        goes on writing while the test reads)."""
        seqs[:] = [s for s, _ in records_of(client.get("/audit").text)]
        if len(seqs) < 50:
            return False
        older[:] = records_of(client.get("/audit/records", params={"before": seqs[-1]}).text)
        return bool(older)

    wait_until(two_pages, timeout=60)
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 50
    assert older[0][0] == seqs[-1] - 1  # the next page goes on where this one ended

    trials = records_of(client.get("/audit/records", params={"kind": "trial"}).text)
    assert trials and all(k.startswith("trial.") for _, k in trials)
    kept = [s for s, k in trials if k == "trial.kept"]
    assert kept
    # a correlation ties the records of one trial together
    page = client.get("/audit/records", params={"kind": "trial.kept"}).text
    correlation = page.split("/audit?correlation=", 1)[1].split('"', 1)[0].replace("%3A", ":")
    same = client.get("/audit/records", params={"correlation": correlation}).text
    kinds = {k for _, k in records_of(same)}
    assert {"trial.proposed", "trial.kept"} <= kinds, kinds
    assert all(f">{correlation}<" in row for row in same.split("<tr")[1:] if "data-seq" in row)

    filed = file_approval(lab)
    wait_until(
        lambda: (
            f"approval {filed.id}" in client.get("/audit/records", params={"text": filed.id}).text
        ),
        timeout=30,
    )
    by_actor = client.get("/audit/records", params={"actor": "tuner", "kind": "approval"}).text
    assert f"approval {filed.id}" in by_actor
    nothing = client.get("/audit/records", params={"text": "no such words anywhere"}).text
    assert "no record matches" in nothing

    assert client.get("/audit/records", params={"before": 0}).status_code == 400
    long = client.get("/audit/records", params={"text": "x" * 201})
    assert long.status_code == 400 and "at most 200" in long.text


def test_verify_shows_the_chain_intact_then_the_first_bad_record(
    lab: WebLab, client: httpx.Client
) -> None:
    ok = client.get("/audit/verify").text
    assert 'data-ok="true"' in ok and "intact:" in ok and "last signed checkpoint at seq" in ok
    db = lab.root / ".overnight" / "overnight.db"
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        (subject,) = conn.execute("SELECT subject FROM ov_audit WHERE seq = 3").fetchone()
        with conn:
            conn.execute("UPDATE ov_audit SET subject = 'nothing happened' WHERE seq = 3")
        try:
            broken = client.get("/audit/verify").text
        finally:
            with conn:
                conn.execute("UPDATE ov_audit SET subject = ? WHERE seq = 3", (subject,))
    assert 'data-ok="false"' in broken and 'data-seq="3"' in broken
    assert "broken at seq 3" in broken and "do not match its hash" in broken
    assert "nothing happened" in broken  # the bad record itself is shown
    assert 'data-ok="true"' in client.get("/audit/verify").text


# -- in the browser ---------------------------------------------------------------------------


def open_view(page: Page, lab: WebLab, path: str) -> None:
    page.goto(lab.url.replace("/?token", f"{path}?token"))
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    page.evaluate("window.__loaded = performance.timeOrigin")


def no_reload(page: Page) -> bool:
    return bool(page.evaluate("window.__loaded === performance.timeOrigin"))


def test_deny_in_the_page_discards_the_trial_with_the_reason(
    page: Page, lab: WebLab, client: httpx.Client
) -> None:
    pending = careful_pending(client)
    trial = pending["trial"]
    # the agent's tile says it waits, and for which approval
    open_view(page, lab, "/")
    page.wait_for_function(
        "() => document.getElementById('tile-careful').dataset.state === 'waiting'"
    )
    assert pending["id"] in (page.text_content("#head-careful .why") or "")
    shot(page, "waiting-tile")

    page.click("#head-careful .approval-link")
    card = f"#approval-{pending['id']}"
    page.wait_for_selector(card)
    assert "keep: metric" in (page.text_content(f"{card} .what") or "")
    assert "expires in" in (page.text_content(f"{card} .expiry") or "")
    page.fill(f"{card} input[name=note]", "not tonight")
    page.click(f"{card} button.deny")
    row = f"tr#approval-{pending['id']}[data-status='denied']"
    page.wait_for_selector(row)
    assert "not tonight" in (page.text_content(row) or "") and "web" in (
        page.text_content(row) or ""
    )
    wait_until(lambda: trial_status(lab, trial) == "discarded", timeout=30)
    open_view(page, lab, "/lab")
    page.wait_for_selector(f"#trial-{trial}.st-discarded")
    reason = page.text_content(f"#trial-{trial} .reason") or ""
    assert f"approval {pending['id']} denied: not tonight" in reason


def test_an_approval_answered_in_the_page_unblocks_the_agent(
    page: Page, lab: WebLab, client: httpx.Client
) -> None:
    open_view(page, lab, "/approvals")
    pending = careful_pending(client)
    trial = pending["trial"]
    card = f"#approval-{pending['id']}"
    page.wait_for_selector(card)  # it arrived live, or was there already
    count = len(client.get("/api/approvals?status=pending").json()["approvals"])
    page.wait_for_function(
        f"() => document.querySelector('nav [data-badge=approvals]').textContent === '{count}'"
    )
    shot(page, "approvals")
    page.fill(f"{card} input[name=note]", "good change")
    page.click(f"{card} button.approve")
    page.wait_for_selector(f"tr#approval-{pending['id']}[data-status='approved']")
    wait_until(lambda: trial_status(lab, trial) == "kept", timeout=30)
    page.wait_for_function(
        f"() => document.querySelector('nav [data-badge=approvals]').textContent !== '{count}'"
    )
    assert no_reload(page)
    page.click("nav >> text=Lab")
    page.wait_for_selector(f"#trial-{trial}.st-kept")


def test_a_new_approval_appears_live_and_an_expired_one_cannot_be_answered(
    page: Page, lab: WebLab, client: httpx.Client
) -> None:
    open_view(page, lab, "/approvals")
    before = page.text_content("nav [data-badge=approvals]")
    filed = file_approval(lab, timeout=6.0)
    card = f"#approval-{filed.id}"
    page.wait_for_selector(card)  # no reload: the stream brought it
    assert no_reload(page)
    assert page.text_content("nav [data-badge=approvals]") != before
    assert "pip install requests" in (page.text_content(f"{card} .what") or "")
    assert "risk 0.62" in (page.text_content(card) or "")
    # it counts down, then shows expired and offers no answer
    page.wait_for_function(
        f"() => document.querySelector('{card} .expiry').textContent.startsWith('expires in')"
    )
    page.wait_for_function(
        f"() => document.querySelector('{card}').dataset.status === 'expired'", timeout=30_000
    )
    assert not page.is_visible(f"{card} button.approve")
    # the lab records it expired (not denied), and the page moves it to the history
    page.wait_for_selector(f"tr#approval-{filed.id}[data-status='expired']", timeout=30_000)
    # a page that still offered the button gets the reason it is too late
    page.evaluate(
        f"""(() => {{
            const old = document.createElement('div');
            old.dataset.approval = '{filed.id}';
            old.innerHTML = '<input name=note value=late><button data-answer=approve>a</button>';
            document.body.append(old);
            old.querySelector('button').click();
        }})()"""
    )
    page.wait_for_selector("#toast:not([hidden])")
    assert f"approval {filed.id} expired at" in (page.text_content("#toast") or "")
    assert client.get(f"/api/approvals/{filed.id}").json()["status"] == "expired"


def test_the_audit_view_searches_and_verifies(page: Page, lab: WebLab) -> None:
    open_view(page, lab, "/audit")
    page.click("#verify")
    page.wait_for_selector("#verify-result .verdict.good")
    assert "intact:" in (page.text_content("#verify-result") or "")
    page.fill("#audit-search input[name=kind]", "approval")
    page.click("#audit-search button[type=submit]")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#audit-body tr.record')].length > 0 && "
        "[...document.querySelectorAll('#audit-body tr.record')]"
        ".every(r => r.dataset.kind.startsWith('approval.'))"
    )
    page.click("#audit-body tr.record summary")
    assert '"detail"' in (page.text_content("#audit-body tr.record pre.payload") or "")
    shot(page, "audit")
    assert no_reload(page)
