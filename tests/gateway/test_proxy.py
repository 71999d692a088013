"""The gateway behind an HTTP proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (either
case) and an upstream's own `proxy =`.

The proxy is a tiny one written here (asyncio, loopback) that counts the CONNECT
tunnels it opens and the plain requests it forwards. It resolves `provider.test`
itself, so a request to `https://provider.test:PORT` can only succeed through it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import trustme
from pydantic import ValidationError

from overnight.errors import UserError
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import MemorySink
from overnight.gateway.proxies import bypassed
from overnight.gateway.server import running_gateway
from overnight.org.gateway import GatewayConfig
from overnight.testing.fake_provider import FakeProvider
from tests.helpers.gateway import HELLO, Env, LoopbackServer, gateway, upstream

VARIABLES = ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"]


class TinyProxy(LoopbackServer):
    """An HTTP proxy on 127.0.0.1 in its own thread: CONNECT tunnels, absolute-form forwarding.

    `refuse`: answer every CONNECT with this status instead of opening the tunnel.
    """

    NAMES: ClassVar[dict[str, str]] = {"provider.test": "127.0.0.1"}

    def __init__(self, refuse: int | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.tunnels: list[str] = []
        """The target of each CONNECT, in order."""
        self.forwarded: list[str] = []
        """The request line of each plain request that opened a forwarded connection."""
        self.authorizations: list[str | None] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ")
            headers = {
                name.lower(): value for name, _, value in (f.partition(": ") for f in fields)
            }
            self.authorizations.append(headers.get("proxy-authorization"))
            if method == "CONNECT":
                self.tunnels.append(target)
                if self.refuse is not None:
                    writer.write(b"HTTP/1.1 %d Proxy Authentication Required\r\n" % self.refuse)
                    writer.write(b"content-length: 0\r\n\r\n")
                    await writer.drain()
                    return
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(
                    self.NAMES.get(host, host), int(port)
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                self.forwarded.append(line)
                url = urlsplit(target)
                host = url.hostname or ""
                up_reader, up_writer = await asyncio.open_connection(
                    self.NAMES.get(host, host), url.port or 80
                )
                up_writer.write(head)  # the origin reads the absolute form as is
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(1 << 16):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        sink.close()


def clear_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxy_variables(monkeypatch)


@contextlib.contextmanager
def started_with(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], *args: Any, **kw: Any
) -> Iterator[Env]:
    """A gateway started with these variables set (it reads them as it starts); the
    test's own clients, which would honour them too, then run without them."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with gateway(*args, **kw) as env:
        clear_proxy_variables(monkeypatch)
        yield env


def tls_fake(ca: trustme.CA, *names: str, host: str = "127.0.0.1") -> FakeProvider:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return FakeProvider("anthropic", tls=context, host=host)


@pytest.fixture
def far(ca: trustme.CA) -> Iterator[FakeProvider]:
    """An HTTPS upstream known as provider.test, which only the proxy can resolve."""
    with tls_fake(ca, "provider.test") as fake:
        yield fake


@pytest.fixture
def proxy() -> Iterator[TinyProxy]:
    with TinyProxy() as p:
        yield p


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_an_https_upstream_is_reached_through_the_proxy_tunnel(
    far: FakeProvider,
    proxy: TinyProxy,
    ca_file: str,
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variables = {
        variable: f"http://bob:s%3Acret@127.0.0.1:{proxy.port}",
        "HTTP_PROXY": proxy.url,  # not for loopback upstreams
    }
    with FakeProvider("openai") as local:
        with started_with(
            monkeypatch,
            variables,
            [
                upstream("far", "anthropic", f"https://provider.test:{far.port}", "main",
                         ca_file=ca_file),
                upstream("local", "openai", local.url, "main"),
            ],
            {"claude": ["far/claude-fake-1"], "gpt": ["local/gpt-fake-1"]},
        ) as env:  # fmt: skip
            client = env.anthropic()
            assert client.messages.create(model="claude", max_tokens=5, messages=HELLO).content
            with client.messages.stream(model="claude", max_tokens=5, messages=HELLO) as stream:
                assert "".join(stream.text_stream) == "ok"
            assert env.openai().chat.completions.create(model="gpt", messages=HELLO).choices
            health = json.dumps(env.health())
        assert len(local.requests) == 1
    # One tunnel, kept alive for both requests; the proxy's credentials went on its CONNECT.
    assert proxy.tunnels == [f"provider.test:{far.port}"] and proxy.forwarded == []
    assert proxy.authorizations == ["Basic " + base64.b64encode(b"bob:s:cret").decode()]
    assert [r["headers"]["x-api-key"] for r in far.requests] == ["sk-far-main"] * 2
    assert all("proxy-authorization" not in r["headers"] for r in far.requests)
    assert "cret" not in health and [a.outcome for a in env.sink.attempts] == ["ok"] * 3


def _own_address() -> str:
    """An address of this machine that is not loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            pytest.skip("this machine has no address besides loopback")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    return address


def test_no_proxy_and_an_empty_proxy_setting_go_direct(
    ca: trustme.CA, proxy: TinyProxy, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = _own_address()
    with tls_fake(ca, address, host=address) as fake:
        base = f"https://{address}:{fake.port}"

        def ask(variables: dict[str, str], **setting: str) -> None:
            spec = upstream("own", "anthropic", base, "main", ca_file=ca_file, **setting)
            variables = {"HTTPS_PROXY": proxy.url, **variables}
            with started_with(
                monkeypatch, variables, [spec], {"claude": ["own/claude-fake-1"]}
            ) as env:
                env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)

        ask({})
        assert proxy.tunnels == [f"{address}:{fake.port}"]  # not loopback: proxied
        for no_proxy in ("example.com, " + address, address.rsplit(".", 1)[0] + ".0/24"):
            ask({"no_proxy": no_proxy})
        ask({}, proxy="")
        assert len(proxy.tunnels) == 1  # the last three went direct
        assert len(fake.requests) == 4


def test_an_upstreams_own_proxy_gets_absolute_form_requests_for_http(
    proxy: TinyProxy,
) -> None:
    with FakeProvider("anthropic") as local:
        spec = upstream("local", "anthropic", local.url, "main", proxy=proxy.url)
        with gateway([spec], {"claude": ["local/claude-fake-1"]}) as env:
            for _ in range(2):
                env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert proxy.forwarded == [f"POST {local.url}/v1/messages HTTP/1.1"]  # kept alive
        assert [r["path"] for r in local.requests] == ["/v1/messages"] * 2
        assert proxy.tunnels == []


def test_a_dead_or_refusing_proxy_is_a_connect_error_that_fails_over(
    far: FakeProvider, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]  # nothing listens there
    with TinyProxy(refuse=407) as refusing, FakeProvider("anthropic") as near:
        far_url = f"https://provider.test:{far.port}"
        with started_with(
            monkeypatch,
            {"HTTPS_PROXY": f"http://127.0.0.1:{dead}"},
            [
                upstream("via-dead", "anthropic", far_url, "main", ca_file=ca_file),
                upstream("via-refusing", "anthropic", far_url, "main", ca_file=ca_file,
                         proxy=refusing.url),
                upstream("near", "anthropic", near.url, "main"),
            ],
            {"claude": ["via-dead/claude-fake-1", "via-refusing/claude-fake-1",
                        "near/claude-fake-1"]},
            breaker={"failures": 1, "cooldown": "30s"},
        ) as env:  # fmt: skip
            reply = env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
            assert reply.content[0].text == "ok"  # type: ignore[union-attr]
            first, second, third = env.sink.attempts
            assert (first.outcome, second.outcome, third.outcome) == (
                "failed_over", "failed_over", "ok",
            )  # fmt: skip
            assert first.error is not None and first.error.startswith(
                f"cannot connect to proxy http://127.0.0.1:{dead} (for provider.test:{far.port})"
            ), first.error
            assert second.error == (
                f"proxy {refusing.url} refused the tunnel to provider.test:{far.port}: "
                "HTTP 407 Proxy Authentication Required"
            )
            opened = [p["upstream"] for k, p in env.events if k == "breaker" and p["to"] == "open"]
            assert opened == ["via-dead", "via-refusing"]  # counted as connect failures
        assert refusing.tunnels == [f"provider.test:{far.port}"]
    assert far.requests == []


def test_a_bad_proxy_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GatewayConfig.model_validate(
        {"upstreams": [upstream("a", "anthropic", "https://api.example.com")]}
    )
    monkeypatch.setenv("https_proxy", "socks5://127.0.0.1:1080")
    with (
        pytest.raises(UserError, match="environment variable https_proxy: socks5:// proxies"),
        running_gateway(config, KeyRing(), MemorySink(), secrets={}),
    ):
        pass
    with pytest.raises(ValidationError, match="proxy of upstream 'a': ftp:// proxies"):
        GatewayConfig.model_validate(
            {"upstreams": [upstream("a", "openai", "http://x", proxy="ftp://p:21")]}
        )


@pytest.mark.parametrize(
    ("host", "port", "entries", "expected"),
    [
        ("api.example.com", 443, ["example.com"], True),
        ("example.com", 443, [".example.com"], True),
        ("api.example.com", 443, ["*.example.com"], True),
        ("notexample.com", 443, ["example.com"], False),
        ("api.example.com", 443, ["example.com:8443"], False),
        ("api.example.com", 8443, ["example.com:8443"], True),
        ("10.1.2.3", 443, ["10.0.0.0/8"], True),
        ("10.1.2.3", 443, ["10.1.2.4"], False),
        ("fd00::2", 443, ["fd00::/64"], True),
        ("fd00::2", 443, ["[fd00::2]:443"], True),
        ("anything.org", 80, ["*"], True),
        ("anything.org", 80, [], False),
    ],
)
def test_no_proxy_entries(host: str, port: int, entries: list[str], expected: bool) -> None:
    assert bypassed(host, port, tuple(entries)) is expected
