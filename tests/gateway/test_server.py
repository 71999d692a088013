"""The gateway's own HTTP/1.1 server (`overnight.gateway.server`), through real sockets.

What a client sees when it sends too much, sends garbage, sends slowly, waits
for `100 Continue`, pipelines, or is mid-request when the gateway stops. The
clients are raw sockets (for what no SDK sends), curl and the official SDKs;
the upstreams are fake providers on loopback.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httptools
import openai
import pytest

from overnight.gateway import server
from overnight.sessions import wait_until
from overnight.testing.fake_provider import FakeProvider
from tests.helpers.gateway import HELLO, Env, gateway, upstream

LIMIT = 64 * 1024  # the max_body of these tests


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Raw:
    """A client socket that sends bytes as given and reads answers as they come."""

    sock: socket.socket
    answers: deque[Answer] = field(default_factory=deque)
    _headers: dict[str, str] = field(default_factory=dict)
    _body: list[bytes] = field(default_factory=list)
    _parser: Any = None

    @classmethod
    def to(cls, url: str) -> Raw:
        host, port = url.removeprefix("http://").split(":")
        raw = cls(socket.create_connection((host, int(port)), timeout=20))
        raw._parser = httptools.HttpResponseParser(raw)
        return raw

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        self.answers.append(Answer(status, self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Answer:
        """The next whole answer (a `100 Continue` counts as one)."""
        while not self.answers:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("the gateway closed the connection without an answer")
            self._parser.feed_data(data)
        return self.answers.popleft()

    def closed_by_peer(self) -> bool:
        """Read until the gateway closes the connection (True), keeping what arrives."""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return True
            if not data:
                return True
            self._parser.feed_data(data)

    def nothing_yet(self) -> bool:
        """No byte has arrived and the connection is still open."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def close(self) -> None:
        self.sock.close()


def head(path: str, key: str | None, length: int | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: gateway", "content-type: application/json"]
    if key is not None:
        lines.append(f"authorization: Bearer {key}")
    if length is not None:
        lines.append(f"content-length: {length}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def messages_body(model: str = "claude", text: str = "hello", **kw: Any) -> bytes:
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    return json.dumps(body | kw).encode()


def chat_body(model: str = "gpt", text: str = "hello") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    with FakeProvider("anthropic") as a, FakeProvider("openai") as o:
        yield a, o


@pytest.fixture
def env(fakes: tuple[FakeProvider, FakeProvider]) -> Iterator[Env]:
    a, o = fakes
    with gateway(
        [upstream("a", "anthropic", a.url, "main"), upstream("o", "openai", o.url, "main")],
        {"claude": ["a/claude-fake-1"], "gpt": ["o/gpt-fake-1"]},
        max_body="64KiB",
    ) as e:
        e.extra["fakes"] = fakes
        yield e


@contextlib.contextmanager
def raw(env: Env) -> Iterator[Raw]:
    conn = Raw.to(env.url)
    try:
        yield conn
    finally:
        conn.close()


# --- bodies over max_body ----------------------------------------------------------------------


def test_a_body_over_max_body_is_a_413_in_the_clients_protocol(env: Env) -> None:
    big = "x" * (LIMIT + 1000)
    with pytest.raises(anthropic.APIStatusError) as a_err:
        env.anthropic().messages.create(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": big}]
        )
    assert a_err.value.status_code == 413
    assert a_err.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert f"limit of {LIMIT} bytes (max_body)" in a_err.value.message
    client = env.openai()
    with pytest.raises(openai.APIStatusError) as chat_err:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": big}])
    assert chat_err.value.status_code == 413 and chat_err.value.code == "request_too_large"
    assert chat_err.value.type == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as resp_err:
        client.responses.create(model="gpt", input=big)
    assert resp_err.value.status_code == 413 and resp_err.value.code == "request_too_large"

    # A body without a declared length (chunked) is refused once it passes the limit,
    # before its end; what follows is read and dropped, then the connection ends.
    with raw(env) as conn:
        conn.send(head("/v1/chat/completions", env.key, None, "transfer-encoding: chunked"))
        payload = chat_body(text=big)
        for start in range(0, len(payload), 8192):
            piece = payload[start : start + 8192]
            conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        answer = conn.answer()
        assert answer.status == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert answer.headers["connection"] == "close"
        conn.send(b"5\r\nmore.\r\n0\r\n\r\n")
        assert conn.closed_by_peer()

    # Under the limit is served, on a new connection of the same SDK client.
    small = "y" * (LIMIT - 1000)
    reply = env.anthropic().messages.create(
        model="claude", max_tokens=5, messages=[{"role": "user", "content": small}]
    )
    assert reply.type == "message"
    assert [a.outcome for a in env.sink.attempts] == ["ok"]


# --- Expect: 100-continue ------------------------------------------------------------------------


def test_expect_100_continue_is_answered_before_the_body_is_sent(env: Env) -> None:
    body = messages_body()
    with raw(env) as conn:
        conn.send(head("/v1/messages", env.key, len(body), "expect: 100-continue"))
        assert conn.answer().status == 100
        conn.send(body)
        answer = conn.answer()
        assert answer.status == 200 and answer.json()["type"] == "message"
        # keep-alive: the same connection serves the next request
        conn.send(head("/v1/messages", env.key, len(body)) + body)
        assert conn.answer().status == 200

    # Too big by its declared length: refused at once, the body is never asked for.
    with raw(env) as conn:
        conn.send(head("/v1/messages", env.key, 1 << 20, "expect: 100-continue"))
        answer = conn.answer()
        assert answer.status == 413 and answer.json()["error"]["type"] == "request_too_large"
        assert answer.headers["connection"] == "close"
        assert conn.closed_by_peer() and not conn.answers

    # A wrong key: 401 in the client's protocol, no 100 either.
    with raw(env) as conn:
        conn.send(head("/v1/chat/completions", "ovn-wrong", 100, "expect: 100-continue"))
        answer = conn.answer()
        assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        assert conn.closed_by_peer() and not conn.answers


def test_curl_sending_expect_gets_its_answer_or_a_413_without_uploading(
    env: Env, tmp_path: Path
) -> None:
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_bytes(messages_body(text="z" * 5000))
    big.write_bytes(messages_body(text="z" * (1 << 20)))

    def curl(path: Path) -> tuple[str, str]:
        done = subprocess.run(
            [
                "curl", "-sS", "-v", "--max-time", "20",
                "-H", "Expect: 100-continue",
                "-H", f"x-api-key: {env.key}",
                "-H", "content-type: application/json",
                "--data-binary", f"@{path}",
                "-o", "-", "-w", "\n%{http_code} %{size_upload}",
                env.url + "/v1/messages",
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout, done.stderr

    out, err = curl(small)
    assert "< HTTP/1.1 100 Continue" in err
    assert out.endswith(f"\n200 {small.stat().st_size}")
    assert json.loads(out.rsplit("\n", 1)[0])["type"] == "message"

    out, err = curl(big)
    assert "100 Continue" not in err
    assert out.endswith("\n413 0"), out[-200:]  # refused without uploading a byte
    assert json.loads(out.rsplit("\n", 1)[0])["error"]["type"] == "request_too_large"


# --- heads too big, garbage ------------------------------------------------------------------------


def test_too_many_or_too_large_headers_get_431(env: Env) -> None:
    get = b"GET /health HTTP/1.1\r\nhost: gateway\r\n"
    fine = get + b"".join(b"x-h%d: v\r\n" % i for i in range(90)) + b"\r\n"
    with raw(env) as conn:
        conn.send(fine)
        assert conn.answer().status == 200

    many = get + b"".join(b"x-h%d: v\r\n" % i for i in range(server.MAX_HEADERS + 1)) + b"\r\n"
    huge = get + b"x-big: " + b"v" * (server.MAX_HEAD + 1) + b"\r\n\r\n"
    for data in (many, huge):
        with raw(env) as conn:
            conn.send(data)
            answer = conn.answer()
            assert answer.status == 431, answer
            assert answer.headers["connection"] == "close"
            assert conn.closed_by_peer()

    # A header that never ends is refused once it is too big, not buffered forever.
    with raw(env) as conn:
        conn.send(get + b"x-endless: ")
        sent = 0
        while conn.nothing_yet() and sent < 100 * server.MAX_HEAD:
            conn.send(b"v" * 4096)
            sent += 4096
        answer = conn.answer()
        assert answer.status == 431 and sent < 100 * server.MAX_HEAD
        assert conn.closed_by_peer()


def test_malformed_http_is_a_400_and_the_connection_ends(env: Env) -> None:
    with raw(env) as conn:
        conn.send(b"HELLO THERE\r\n\r\n")
        answer = conn.answer()
        assert answer.status == 400 and answer.body.startswith(b"bad request")
        assert conn.closed_by_peer()

    # After a good request on the same connection: it is answered first, then the 400.
    with raw(env) as conn:
        body = messages_body()
        conn.send(head("/v1/messages", env.key, len(body)) + body + b"GET /\x00 HTTP/1.1\r\n\r\n")
        assert conn.answer().status == 200
        assert conn.answer().status == 400
        assert conn.closed_by_peer()

    # A broken chunk inside a request's body: that request gets the 400.
    with raw(env) as conn:
        conn.send(head("/v1/messages", env.key, None, "transfer-encoding: chunked"))
        conn.send(b"5\r\nhello\r\nzz\r\n")
        assert conn.answer().status == 400
        assert conn.closed_by_peer()
    assert [a.outcome for a in env.sink.attempts] == ["ok"]


# --- slow clients --------------------------------------------------------------------------------


def test_slow_clients_are_dropped_and_do_not_hold_up_others(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 5.0)
    monkeypatch.setattr(server, "BODY_TIMEOUT", 6.0)
    slow: list[Raw] = []
    trickling = threading.Event()
    trickler = Raw.to(env.url)  # never idle, never done: one byte at a time
    try:
        for _ in range(10):  # a head that never ends
            conn = Raw.to(env.url)
            conn.send(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-api-key: ")
            slow.append(conn)
        for _ in range(10):  # a body that never ends
            conn = Raw.to(env.url)
            conn.send(head("/v1/messages", env.key, 1000) + b'{"model": ')
            slow.append(conn)
        trickler.send(b"GET /health HTTP/1.1\r\nx-slow: ")

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not trickling.wait(0.05):  # the client's own slowness
                    trickler.send(b"v")

        threading.Thread(target=trickle, daemon=True).start()

        # Everyone else is served meanwhile.
        client = env.anthropic()
        for _ in range(5):
            assert client.messages.create(model="claude", max_tokens=5, messages=HELLO).content
        assert all(conn.nothing_yet() for conn in slow)

        for conn in [*slow, trickler]:
            answer = conn.answer()
            assert answer.status == 408, answer
            assert conn.closed_by_peer()
        assert slow[0].answers == deque() and b"head" in answer.body
    finally:
        trickling.set()
        for conn in slow:
            conn.close()
        trickler.close()
    assert [a.outcome for a in env.sink.attempts] == ["ok"] * 5


# --- keep-alive and pipelining ---------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_on_one_connection(env: Env) -> None:
    a, _ = env.extra["fakes"]
    a.fault("delay", seconds=0.3)  # the first answer is the slowest
    first, third = messages_body(), chat_body()
    with raw(env) as conn:
        conn.send(
            head("/v1/messages", env.key, len(first))
            + first
            + b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n"
            + head("/v1/chat/completions", env.key, len(third))
            + third
        )
        answers = [conn.answer() for _ in range(3)]
        assert [x.status for x in answers] == [200, 200, 200]
        assert answers[0].json()["type"] == "message"
        assert answers[1].json()["status"] == "ok"
        assert answers[2].json()["object"] == "chat.completion"
        conn.send(head("/v1/messages", env.key, len(first)) + first)  # still open
        assert conn.answer().json()["type"] == "message"

    # HTTP/1.0 without keep-alive: answered, then closed.
    with raw(env) as conn:
        conn.send(b"GET /health HTTP/1.0\r\n\r\n")
        answer = conn.answer()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert conn.closed_by_peer()


# --- stopping ---------------------------------------------------------------------------------------


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (ConnectionRefusedError, ConnectionResetError):  # (reset: caught in the backlog
        return True  # of a listening socket that closed just then)
    return False


def test_a_stop_lets_requests_in_flight_finish() -> None:
    with FakeProvider("anthropic") as a, contextlib.ExitStack() as stack:
        env = stack.enter_context(
            gateway([upstream("a", "anthropic", a.url, "main")], {"claude": ["a/claude-fake-1"]})
        )
        a.fault("delay", seconds=1.0)
        got: dict[str, Any] = {}

        def ask() -> None:  # a client of its own: leaving `gateway()` closes env's clients
            with (
                anthropic.Anthropic(base_url=env.url, api_key=env.key, max_retries=0) as client,
                client.messages.stream(model="claude", max_tokens=5, messages=HELLO) as stream,
            ):
                got["text"] = "".join(stream.text_stream)

        client = threading.Thread(target=ask)
        client.start()
        wait_until(lambda: len(a.requests) == 1, timeout=10)
        stopper = threading.Thread(target=stack.close)  # leaves the `with gateway`
        stopper.start()
        wait_until(lambda: _refused(env.url), timeout=10)  # no new connections meanwhile
        stopper.join(30)
        client.join(30)
        assert got["text"] == "ok"
        assert [x.outcome for x in env.sink.attempts] == ["ok"]


def test_a_request_still_running_after_the_grace_period_is_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "GRACE", 0.5)
    with FakeProvider("anthropic") as a, contextlib.ExitStack() as stack:
        env = stack.enter_context(
            gateway([upstream("a", "anthropic", a.url, "main")], {"claude": ["a/claude-fake-1"]})
        )
        a.fault("delay", seconds=60)
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                with anthropic.Anthropic(base_url=env.url, api_key=env.key, max_retries=0) as c:
                    c.messages.create(model="claude", max_tokens=5, messages=HELLO)
            except anthropic.APIConnectionError as exc:
                failed.append(exc)

        client = threading.Thread(target=ask)
        client.start()
        wait_until(lambda: len(a.requests) == 1, timeout=10)
        stack.close()
        client.join(30)
        assert len(failed) == 1
        assert [x.outcome for x in env.sink.attempts] == ["cancelled"]


def test_requests_leave_no_reference_cycles_for_the_collector() -> None:
    """A request's objects are freed by reference counting alone. Each cycle a request
    left behind grew the collector's youngest generation until a collection, which then
    stopped the gateway for 30-90 ms with every request in flight (seen at concurrency 64
    in benchmarks/gateway_overhead.py). Counted in a process of its own, collector off."""
    script = Path(__file__).parent / "data" / "gateway_garbage.py"
    done = subprocess.run(
        [sys.executable, str(script), "200"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts == {"requests": 200, "unreachable": 0}
