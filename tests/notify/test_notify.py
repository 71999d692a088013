"""Notifications: a sleeping user is told through webhooks, ntfy, email and the browser.

Real receivers on loopback (an HTTP server; aiosmtpd with STARTTLS and a login, on
a certificate from a throwaway CA), real runs through the CLI, the notifier of
`overnight.notify` over a real store for what needs a controlled clock or burst.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from overnight.errors import ConfigError
from overnight.gateway.meter import BudgetExhausted, Budgets
from overnight.governance.approvals import Approvals
from overnight.notify import Notifier, sinks_of
from overnight.org import load_org
from overnight.org.config import OrgConfig
from overnight.org.gateway import BudgetsConfig, LimitConfig
from overnight.org.notify import SinkConfig
from overnight.records import Notice, Run, TrialStatus
from overnight.sessions import wait_until
from overnight.store import SqlStore, open_store, store_url
from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli

TOKEN = "T0KENxyzzy4242"
"""The secret part of every webhook address here: it must never be written down."""


# -- receivers --------------------------------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on loopback that keeps every POST; the first `failures` are answered
    500, and each waits for `release` (set by default)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.posts: list[Post] = []
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.release.wait(30)
                receiver.posts.append(Post(self.path, dict(self.headers), body))
                status = 500 if len(receiver.posts) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook/{TOKEN}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]

    yield make
    for r in made:
        r.close()


def dead_url() -> str:
    """An address where nothing listens (a port just given back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook/{TOKEN}"


@dataclass
class Mailbox:
    """aiosmtpd on loopback: STARTTLS required, then a login (user `night`, password `owl`)."""

    host: str
    port: int
    ca_file: Path
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    ca = trustme.CA()
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox("127.0.0.1", port, ca_file)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            box.messages.append(message)
            return "250 2.0.0 queued as 42"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"night", b"owl")
        if ok:
            box.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: it answers 535

    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, tls_context=context,
        require_starttls=True, auth_required=True, authenticator=authenticator,
    )  # fmt: skip
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


# -- labs -------------------------------------------------------------------------------------


def notify_lab(root: Path, sinks: str) -> Path:
    """The toy lab with `sinks` at the end of its overnight.toml, committed."""
    return make_lab(root, extra=sinks)


def stored(root: Path) -> tuple[SqlStore, Run]:
    store = open_store(store_url(root))
    assert isinstance(store, SqlStore)
    run = store.latest_run("toy")
    assert run is not None
    return store, run


def secret_free(root: Path, *texts: str) -> None:
    """TOKEN is nowhere overnight wrote: the database (and its WAL), the logs, `texts`."""
    state = root / ".overnight"
    for path in state.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for text in texts:
        assert TOKEN not in text


def test_a_run_tells_webhooks_and_ntfy_of_its_bests_and_its_stop(
    tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook, slack, ntfy = receivers(), receivers(), receivers()
    lab = notify_lab(
        tmp_path / "lab",
        f"""
[[notify]]
kind = "webhook"
url_env = "HOOK_URL"
min_interval = "0s"
events = ["best", "stopped"]

[[notify]]
kind = "webhook"
name = "team-chat"
format = "slack"
url_file = "{tmp_path / "slack-url"}"
events = ["stopped"]

[[notify]]
kind = "ntfy"
url = "{ntfy.base}/overnight-toy"
token_env = "NTFY_TOKEN"
events = ["stopped"]
""",
    )
    (tmp_path / "slack-url").write_text(slack.url + "\n")
    done = run_cli(
        "run", str(lab), "--trials", "6", "--no-ui",
        env={"HOOK_URL": hook.url, "NTFY_TOKEN": f"tk_{TOKEN}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    store, run = stored(lab)
    try:
        trials = store.trials(run.id)
        rows = store.notifications("toy", limit=100)
    finally:
        store.close()
    # one "best" message per new lab best after the baseline, in order, with the delta
    bests, best = [], None
    for t in trials:
        if t.status is TrialStatus.kept and t.metric is not None:
            if best is not None and t.metric < best:
                bests.append(t)
            best = t.metric if best is None or t.metric < best else best
    # (those that came close together went as one digest: read each message's list)
    messages = [p.json() for p in hook.posts]
    assert {(m["lab"], m["run"]) for m in messages} == {("toy", run.id)}
    said = [n for m in messages for n in m["notifications"]]
    assert [n["event"] for n in said] == ["best"] * len(bests) + ["stopped"]
    for notification, trial in zip(said, bests, strict=False):
        assert f"trial {trial.number}" in notification["title"]
        assert f"{trial.metric:.6g}" in notification["title"]
        assert "on the previous best" in notification["text"]
    stop = said[-1]
    assert "stopped by --trials 6" in stop["title"], stop
    assert "6 trial(s)" in stop["text"] and "vs baseline" in stop["text"]
    assert stop["link"].startswith("file://") and stop["link"].endswith("report.html")
    report = Path(stop["link"].removeprefix("file://"))
    assert f"<title>toy: run {run.id}</title>" in report.read_text()
    assert report.with_suffix(".md").read_text().startswith(f"# toy: run {run.id}")
    # Slack's format: {"text": ...} with the same text in its blocks
    (chat,) = [p.json() for p in slack.posts]
    assert "stopped by --trials 6" in chat["text"]
    assert chat["blocks"][0]["text"]["text"] == chat["text"]
    # ntfy: the text as the body, the title and the token in headers
    (push,) = ntfy.posts
    assert push.path == "/overnight-toy"
    title = push.headers["Title"]
    assert title.startswith("=?UTF-8?B?") and title.endswith("?=")  # RFC 2047: "·" is not ASCII
    assert base64.b64decode(title[10:-2]).decode() == f"overnight · toy: {stop['title']}"
    assert push.headers["Priority"] == "default" and push.headers["Tags"] == "checkered_flag"
    assert push.headers["Authorization"] == f"Bearer tk_{TOKEN}"
    assert "6 trial(s)" in push.body.decode()
    # every delivery is in the store, with the sink's answer, by sink name
    assert {(r.notice.sink, r.status, r.answer) for r in rows} == {
        ("webhook", "delivered", "HTTP 200"),
        ("team-chat", "delivered", "HTTP 200"),
        ("ntfy", "delivered", "HTTP 200"),
    }
    secret_free(lab, done.stdout, done.stderr)
    audit = run_cli("audit", "export", str(lab), "--jsonl")
    assert audit.returncode == 0 and TOKEN not in audit.stdout


def test_a_dead_webhook_never_stops_a_run_and_its_failures_are_recorded(tmp_path: Path) -> None:
    lab = notify_lab(
        tmp_path / "lab",
        """
[[notify]]
kind = "webhook"
url_env = "HOOK_URL"
min_interval = "0s"
tries = 3
backoff = "1s"
""",
    )
    started = time.monotonic()
    done = run_cli("run", str(lab), "--trials", "4", "--no-ui", env={"HOOK_URL": dead_url()})
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    store, _ = stored(lab)
    try:
        rows = store.notifications("toy", limit=100)
    finally:
        store.close()
    assert "stopped" in {r.notice.kind for r in rows}
    assert {r.status for r in rows} == {"failed"}
    assert all("Connection refused" in (r.error or "") for r in rows)
    assert took < 120
    secret_free(lab, done.stdout, done.stderr)


def test_an_email_goes_through_starttls_and_a_login_with_the_morning_report(
    tmp_path: Path, mailbox: Mailbox
) -> None:
    sinks = f"""
[[notify]]
kind = "email"
host = "127.0.0.1"
port = {mailbox.port}
username = "night"
password_env = "SMTP_PASSWORD"
from = "overnight@lab.test"
to = ["you@lab.test", "me@lab.test"]
ca_file = "{mailbox.ca_file}"
events = ["stopped"]
"""
    lab = notify_lab(tmp_path / "lab", sinks)
    done = run_cli("run", str(lab), "--trials", "2", "--no-ui", env={"SMTP_PASSWORD": "owl"})
    assert done.returncode == 0, done.stderr
    assert mailbox.logins == ["night"]
    (mail,) = mailbox.messages
    assert mail["From"] == "overnight@lab.test" and mail["To"] == "you@lab.test, me@lab.test"
    assert mail["Subject"].startswith("overnight · toy: run ") and "--trials 2" in mail["Subject"]
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and "2 trial(s)" in body.get_content()
    names = sorted(part.get_filename() for part in mail.iter_attachments())
    assert names == ["report-progress.png", "report.html"]
    store, _ = stored(lab)
    try:
        (row,) = store.notifications("toy")
    finally:
        store.close()
    assert row.status == "delivered" and row.answer == "250 2.0.0 queued as 42"
    assert "owl" not in (lab / ".overnight" / "overnight.db").read_bytes().decode("latin-1")

    # a wrong password: the test command says what the server answered
    wrong = run_cli("notify", "test", str(lab), env={"SMTP_PASSWORD": "bat"})
    assert wrong.returncode == 1
    assert f"email (email, 127.0.0.1:{mailbox.port}): failed — login refused: 535" in wrong.stdout
    right = run_cli("notify", "test", str(lab), env={"SMTP_PASSWORD": "owl"})
    assert right.returncode == 0, right.stdout + right.stderr
    assert "delivered — 250 2.0.0 queued as 42" in right.stdout
    test_body = mailbox.messages[-1].get_body()
    assert test_body is not None and "overnight notify test" in test_body.get_content()


def test_notify_test_says_what_every_sink_answered(
    tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook = receivers()
    lab = notify_lab(
        tmp_path / "lab",
        f"""
[[notify]]
kind = "webhook"
url_env = "HOOK_URL"

[[notify]]
kind = "webhook"
name = "gone"
url = "{dead_url()}"

[[notify]]
kind = "browser"
""",
    )
    said = run_cli("notify", "test", str(lab), env={"HOOK_URL": hook.url})
    assert said.returncode == 1, said.stderr
    lines = said.stdout.splitlines()
    port = hook.base.rsplit(":", 1)[1]
    assert lines[0] == f"webhook (webhook, 127.0.0.1:{port}): delivered — HTTP 200"
    assert lines[1].startswith("gone (webhook, 127.0.0.1:") and "failed — " in lines[1]
    assert "Connection refused" in lines[1]
    assert lines[2] == (
        "browser (browser, the command center): failed — no run to post to: start one with "
        "`overnight run`"
    )
    (post,) = hook.posts
    assert post.json()["event"] == "test" and "sink 'webhook'" in post.json()["title"]
    assert TOKEN not in said.stdout + said.stderr

    unset = run_cli("notify", "test", str(lab), env={"HOOK_URL": ""})
    assert unset.returncode == 2
    assert unset.stderr.splitlines() == [
        f"error: {lab / 'overnight.toml'}: notify[webhook].url_env: environment variable "
        "HOOK_URL is not set (sink 'webhook' reads its url)",
        "  fix: export HOOK_URL=... before starting, or use url_file = instead",
    ]


# -- the notifier over a real store ------------------------------------------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab after a real run of two trials: a run id, agent `t`, a baseline."""
    lab = make_lab(tmp_path_factory.mktemp("notify") / "lab")
    done = run_cli("run", str(lab), "--trials", "2", "--no-ui")
    assert done.returncode == 0, done.stderr
    return lab


@dataclass
class Night:
    store: SqlStore
    run: Run
    config: OrgConfig
    notifiers: list[Notifier] = field(default_factory=list)

    def notifier(self, *sinks: dict[str, Any], webhook: str | None = None) -> Notifier:
        config = self.config.model_copy(
            update={
                "notify": [SinkConfig.model_validate(s) for s in sinks],
                "governance": self.config.governance.model_copy(update={"webhook": webhook}),
            }
        )
        notifier = Notifier(self.store, self.run, config, sinks_of(config, "overnight.toml"))
        notifier.POLL_S = 0.05
        self.notifiers.append(notifier)
        return notifier

    def crash(self, agent: str = "t", status: int = 1) -> None:
        self.store.set_agent_state(self.run.id, agent, "crashed", exit_status=status,
                                   restart_in_s=1.0)  # fmt: skip


@pytest.fixture
def night(ran: Path, tmp_path: Path) -> Iterator[Night]:
    """The run of `ran`, in a copy of its database of the test's own."""
    copy = tmp_path / "night.db"
    with sqlite3.connect(ran / ".overnight" / "overnight.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    store = open_store(f"sqlite:///{copy}")
    assert isinstance(store, SqlStore)
    run = store.latest_run("toy")
    assert run is not None
    config = load_org(ran).config
    n = Night(store, run, config)
    yield n
    for notifier in n.notifiers:
        notifier.close(timeout=5)
    store.close()


def hook(url: str, **more: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, "min_interval": "0s", **more}


def test_a_storm_of_crashes_becomes_one_digest(
    night: Night, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    notifier = night.notifier(hook(r.url, min_interval="30s", events=["crash"]))
    for _ in range(100):
        night.crash()
    notifier.start()
    wait_until(lambda: len(r.posts) >= 1, 30)
    (post,) = r.posts
    message = post.json()
    assert message["event"] == "digest" and len(message["notifications"]) == 100
    assert message["title"] == "100 notifications (100 crash)"
    assert message["text"].count("agent t crashed") == 20 and "- and 80 more" in message["text"]
    night.crash()  # within min_interval: it waits for the next digest
    wait_until(lambda: len(night.store.notifications("toy", statuses=["queued"])) == 1, 10)
    assert len(r.posts) == 1  # held: the courier sends again 30 s after the digest


def test_a_failing_sink_is_retried_with_backoff_until_it_answers(
    night: Night, receivers: Callable[..., Receiver]
) -> None:
    r = receivers(failures=2)
    notifier = night.notifier(hook(r.url, tries=4, backoff="200ms", events=["crash"]))
    notifier.start()
    night.crash(status=9)
    wait_until(lambda: len(r.posts) == 3, 30)
    wait_until(
        lambda: (
            [n.status for n in night.store.notifications("toy", sink="webhook")] == ["delivered"]
        ),
        10,
    )
    (row,) = night.store.notifications("toy", sink="webhook")
    assert (row.tries, row.answer, row.error) == (3, "HTTP 200", None)
    assert r.posts[0].body == r.posts[2].body and "exit status 9" in r.posts[0].json()["text"]


def test_a_sink_that_never_answers_is_given_up_after_its_tries(night: Night) -> None:
    notifier = night.notifier(hook(dead_url(), tries=3, backoff="50ms", events=["crash"]))
    notifier.start()
    night.crash()
    wait_until(lambda: [n.status for n in night.store.notifications("toy")] == ["failed"], 30)
    (row,) = night.store.notifications("toy")
    assert row.tries == 3 and "Connection refused" in (row.error or "")


def test_the_approvals_webhook_is_a_sink_that_never_holds_the_agent_up(
    night: Night, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    r.release.clear()  # the receiver holds its answer until the test has looked
    notifier = night.notifier(webhook=r.url)
    notifier.start()
    inbox = Approvals(night.store, "toy")
    action = {"kind": "shell", "command": "pip install requests", "agent": "t"}
    approval = inbox.request(night.run.id, "t", action, "network installs need review", risk=0.6)
    assert r.posts == [] and inbox.get(approval.id) is not None
    r.release.set()
    wait_until(lambda: len(r.posts) == 1, 30)
    body = r.posts[0].json()
    assert approval.id in body["text"] and "pip install requests" in body["text"]
    assert f"overnight approve {approval.id}" in body["text"] and "(risk 0.60)" in body["text"]
    assert body["blocks"][0]["text"]["text"] == body["text"]
    wait_until(lambda: night.store.notifications("toy")[0].status == "delivered", 10)
    assert night.store.notifications("toy")[0].notice.sink == "governance.webhook"


def test_an_agent_silent_for_stuck_after_is_told_once(
    night: Night, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    notifier = night.notifier(hook(r.url, stuck_after="10m", events=["stuck"]))
    now = time.time()
    night.store.set_agent_state(night.run.id, "t", "working")
    assert notifier.follow_once(now + 60) == 0  # a minute's silence is no news
    assert notifier.follow_once(now + 601) == 1
    assert notifier.follow_once(now + 900) == 0  # one silence, one message
    heard = night.store.append_event(night.run.id, "trial.proposed", {}, agent="t").at
    assert notifier.follow_once(heard + 60) == 0
    assert notifier.follow_once(heard + 601) == 1  # a new silence
    heard = night.store.append_event(night.run.id, "trial.running", {}, agent="t", trial=9).at
    assert notifier.follow_once(heard + 601) == 0  # a trial runs: budget + grace (25 s) more
    assert notifier.follow_once(heard + 627) == 1
    night.store.set_agent_state(night.run.id, "t", "paused", reason="by you")
    assert notifier.follow_once(time.time() + 5000) == 0  # a paused agent is not stuck
    notifier.start()  # all were queued already: they go as one message
    wait_until(lambda: len(r.posts) == 1, 10)
    said = r.posts[0].json()
    assert [n["title"] for n in said["notifications"]] == [
        "agent t is stuck: no turn and no trial for 10m"
    ] * 3


def test_brownouts_budgets_and_cost_anomalies_are_told(
    night: Night, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    notifier = night.notifier(hook(r.url, events=["brownout", "budget", "cost_anomaly"]))
    run, store = night.run.id, night.store
    store.append_event(run, "gateway.brownout", {"route": "smart", "brownout": True})
    store.append_event(run, "gateway.brownout", {"route": "smart", "brownout": True})
    for _ in range(3):
        store.append_event(run, "trial.discarded", {"from": "measured"}, agent="t", trial=1)
    store.append_event(run, "gateway.recovery", {"route": "smart", "lasted_s": 754.0})
    store.append_event(run, "trial.crashed", {"from": "running"}, agent="t", trial=2)
    budgets = Budgets(BudgetsConfig(agent=LimitConfig(total_usd=1.0)))
    budgets.on_threshold = lambda crossing: store.append_event(run, "gateway.budget", crossing)
    for _ in range(3):
        budgets.settle(budgets.reserve("t", 0.3), 0.3)
    for _ in range(2):  # 100% is told once
        with pytest.raises(BudgetExhausted):
            budgets.reserve("t", 0.3)
    store.append_event(run, "cost.anomaly", {"title": "t spends 9x its usual per trial"}, agent="t")
    assert notifier.follow_once() == 6
    titles = [n.notice.title for n in store.notifications("toy")]
    assert titles == [
        "brownout: every model of route 'smart' is down",
        "route 'smart' is back after 12m of brownout",
        "budget 50% spent: agent t, in total",
        "budget 80% spent: agent t, in total",
        "budget 100% spent: agent t, in total",
        "t spends 9x its usual per trial",
    ]
    texts = [n.notice.text for n in store.notifications("toy")]
    assert texts[1] == "the brownout lasted 12m; 3 trial(s) finished meanwhile"
    assert texts[2] == "$0.6000 of $1.0000 in total"


# -- configuration mistakes ----------------------------------------------------------------------

BROKEN = {
    "an event that does not exist": (
        '[[notify]]\nkind = "ntfy"\nurl = "https://ntfy.sh/x"\nevents = ["bset"]\n',
        "notify[0].events[0]",
        "'bset' is not an event a sink can hear of",
        "did you mean 'best'?",
    ),
    "a field of another kind": (
        '[[notify]]\nkind = "webhook"\nurl = "https://h.example/x"\nto = ["a@b.c"]\n',
        "notify[0].to",
        "to is not a field of a webhook sink (it belongs to email sinks)",
        'url_env = "SLACK_WEBHOOK_URL"',
    ),
    "a webhook without an address": (
        '[[notify]]\nkind = "webhook"\nformat = "slack"\n',
        "notify[0]",
        "a webhook sink needs its address",
        'add url_env = "WEBHOOK_URL"',
    ),
    "an address given twice": (
        '[[notify]]\nkind = "webhook"\nurl = "https://h.example/x"\nurl_env = "X"\n',
        "notify[0].url",
        "url_env and url are both set",
        "keep one of them",
    ),
    "an email to nobody": (
        '[[notify]]\nkind = "email"\nhost = "smtp.example.com"\nfrom = "a@b.c"\n',
        "notify[0].to",
        "an email sink needs someone to write to",
        'to = ["you@example.com"]',
    ),
    "an unknown kind": (
        '[[notify]]\nkind = "pager"\n',
        "notify[0].kind",
        "'pager' is not one of: webhook, ntfy, email, browser",
        "",
    ),
    "two sinks of one name": (
        '[[notify]]\nkind = "browser"\nname = "me"\n[[notify]]\nkind = "browser"\nname = "me"\n',
        "notify[1].name",
        "sink name 'me' is used twice",
        "give each [[notify]] a name of its own",
    ),
}


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_sink_is_answered_with_file_field_and_fix(
    tmp_path: Path, case: tuple[str, str, str, str]
) -> None:
    table, where, problem, fix = case
    lab = notify_lab(tmp_path / "lab", table)
    result = run_cli("run", str(lab), "--no-ui")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {lab / 'overnight.toml'}:"), lines
    assert f": {where}: {problem}" in lines[0], lines
    assert lines[1].startswith("  fix: ") and fix in lines[1], lines
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_a_secret_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    lab = notify_lab(tmp_path / "lab", '[[notify]]\nkind = "ntfy"\nurl_file = "/nonexistent/x"\n')
    config = load_org(lab)
    with pytest.raises(ConfigError) as caught:
        sinks_of(config.config, config.config_path)
    assert str(caught.value) == (
        f"{config.config_path}: notify[ntfy].url_file: cannot read '/nonexistent/x', the url of "
        "sink 'ntfy' (No such file or directory)\n"
        "  fix: write the url into that file, or use url_env = instead"
    )


# -- the store: one contract on SQLite and PostgreSQL ---------------------------------------------


def test_notices_and_the_cursor_move_together(store: SqlStore) -> None:
    store.create_run("r1", "toy", "abc", {}, {})
    notice = Notice("hook", "crash", "agent t crashed", "exit 1", "r1", "/", 7)
    assert store.notify_position("toy") is None
    first = store.add_notifications("toy", [notice, notice], cursor=(0, 7))
    assert first is not None and [n.status for n in first] == ["queued", "queued"]
    assert store.notify_position("toy") == 7
    assert store.add_notifications("toy", [notice], cursor=(0, 9)) is None  # stale: nothing
    assert len(store.notifications("toy")) == 2
    ids = [n.id for n in first]
    store.settle_notifications(ids, "queued", tries=1, error="HTTP 500")
    store.settle_notifications(ids, "delivered", tries=2, answer="HTTP 200")
    got = store.notifications("toy", sink="hook", statuses=["delivered"])
    assert [(n.tries, n.answer, n.error, n.message) for n in got] == [
        (2, "HTTP 200", None, ids[0])
    ] * 2
    assert got[0].notice == notice
    assert store.notifications("toy", statuses=["queued"]) == []
    assert [n.id for n in store.notifications("toy", limit=1, newest=True)] == [ids[1]]


def test_budgets_tell_each_threshold_once_and_not_what_was_spent_before_a_restart() -> None:
    told: list[tuple[Any, str, int]] = []
    budgets = Budgets(BudgetsConfig(org=LimitConfig(daily_usd=10.0)))
    budgets.seed("a", total=6.0, today=6.0)  # 50% crossed before the restart: old news
    budgets.on_threshold = lambda c: told.append((c["agent"], c["period"], c["percent"]))
    budgets.settle(budgets.reserve("a", 2.0), 2.0)
    budgets.settle(budgets.reserve("a", 1.0), 1.0)
    assert told == [(None, "daily", 80)]
    with pytest.raises(BudgetExhausted):
        budgets.reserve("a", 2.0)
    assert told == [(None, "daily", 80), (None, "daily", 100)]


# -- the browser ---------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CAPTURE = """
window.__notes = [];
const Real = window.Notification;
window.Notification = class {
  constructor(title, options) { window.__notes.push({ title, body: (options || {}).body }); }
  static get permission() { return Real.permission; }
  static requestPermission() { return Real.requestPermission(); }
};
"""
"""Keeps what the page raises: headless Chromium shows no desktop to look at."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`overnight up` on a lab with a browser sink, for the test; its root and URL."""
    lab = notify_lab(tmp_path / "lab", '[[notify]]\nkind = "browser"\nevents = ["stopped"]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "up", str(lab)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    url_file = lab / ".overnight" / "web.url"
    try:
        wait_until(lambda: url_file.is_file() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()
        yield lab, url_file.read_text().strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, out + err


def test_an_open_command_center_raises_the_browser_sinks_notifications(
    served: tuple[Path, str],
) -> None:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is missing: run `make system-deps`", pytrace=False)
    lab, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )  # fmt: skip
        try:
            context = browser.new_context(permissions=["notifications"])
            context.add_init_script(CAPTURE)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.goto(url.split("/?", 1)[0] + "/notifications")
            page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
            assert page.locator("#notify-state").inner_text() == "allowed: this tab raises them"
            assert page.locator("[data-sink=browser] td").nth(3).inner_text() == "stopped"
            said = run_cli("notify", "test", str(lab))
            assert said.returncode == 0, said.stdout + said.stderr
            assert "browser (browser, the command center): delivered" in said.stdout
            page.wait_for_function("() => window.__notes.length > 0", timeout=30_000)
            (note,) = page.evaluate("window.__notes")
            assert note["title"] == "overnight · toy: a test message to sink 'browser'"
            assert "sink 'browser' (browser) reaches you" in note["body"]
            # the page lists it, delivered, within its refresh
            row = page.locator("table.notifications tr[data-sink=browser]").first
            row.wait_for(timeout=15_000)
            assert row.get_attribute("data-status") == "delivered"
            assert not errors, errors
        finally:
            browser.close()
