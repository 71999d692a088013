"""The gateway calling upstreams over TLS: verified by default, a `ca_file` per upstream,
`SSL_CERT_FILE`, and a certificate that does not verify treated as a connect failure.

The upstream is a fake provider serving HTTPS on loopback with a certificate
from a throwaway CA made by `trustme`; clients are the official SDKs.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from overnight.errors import ConfigError
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import MemorySink
from overnight.gateway.server import running_gateway
from overnight.org.gateway import GatewayConfig
from overnight.testing.fake_provider import FakeProvider
from tests.helpers.gateway import HELLO, gateway, upstream
from tests.helpers.processes import OVERNIGHT, run_cli, started, stop


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def tls_fake(ca: trustme.CA) -> Iterator[FakeProvider]:
    with FakeProvider("anthropic", tls=server_tls(ca, "localhost", "127.0.0.1")) as fake:
        yield fake


@pytest.fixture
def plain() -> Iterator[FakeProvider]:
    with FakeProvider("anthropic") as fake:
        yield fake


def test_an_https_upstream_verified_against_its_ca_file(
    tls_fake: FakeProvider, ca_file: str
) -> None:
    url = f"https://localhost:{tls_fake.port}"
    with gateway(
        [upstream("secure", "anthropic", url, "main", ca_file=ca_file)],
        {"claude": ["secure/claude-fake-1"]},
    ) as env:
        client = env.anthropic()
        reply = client.messages.create(model="claude", max_tokens=5, messages=HELLO)
        assert reply.content[0].text == "ok"  # type: ignore[union-attr]
        with client.messages.stream(model="claude", max_tokens=5, messages=HELLO) as stream:
            assert "".join(stream.text_stream) == "ok"
    assert [r["headers"]["x-api-key"] for r in tls_fake.requests] == ["sk-secure-main"] * 2
    assert [a.outcome for a in env.sink.attempts] == ["ok", "ok"]


def test_ssl_cert_file_replaces_the_system_store(
    tls_fake: FakeProvider, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    with gateway(
        [upstream("secure", "anthropic", tls_fake.url, "main")],
        {"claude": ["secure/claude-fake-1"]},
    ) as env:
        assert env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
    assert [a.outcome for a in env.sink.attempts] == ["ok"]


def test_a_certificate_that_does_not_verify_fails_over_as_a_connect_error(
    ca: trustme.CA, tls_fake: FakeProvider, plain: FakeProvider, ca_file: str
) -> None:
    """Signed by a CA the system does not know; or by a known CA for another name."""
    with (
        FakeProvider("anthropic", tls=server_tls(ca, "provider.test")) as other_name,
        gateway(
            [
                upstream("unknown-ca", "anthropic", tls_fake.url, "main"),
                upstream("wrong-name", "anthropic", other_name.url, "main", ca_file=ca_file),
                upstream("plain", "anthropic", plain.url, "main"),
            ],
            {
                "claude": [
                    "unknown-ca/claude-fake-1",
                    "wrong-name/claude-fake-1",
                    "plain/claude-fake-1",
                ]
            },
            breaker={"failures": 2, "cooldown": "30s"},
        ) as env,
    ):
        client = env.anthropic()
        for _ in range(2):
            reply = client.messages.create(model="claude", max_tokens=5, messages=HELLO)
            assert reply.content[0].text == "ok"  # type: ignore[union-attr]
        unknown, wrong, served = env.sink.attempts[:3]
        assert (unknown.outcome, wrong.outcome, served.outcome) == (
            "failed_over", "failed_over", "ok",
        )  # fmt: skip
        assert unknown.error is not None and wrong.error is not None
        assert unknown.error.startswith(
            "tls: certificate verify failed: unable to get local issuer certificate"
        ), unknown.error
        assert wrong.error.startswith("tls: certificate verify failed: IP address mismatch")
        assert unknown.status is None
        # Counted as connect failures: two of them open each breaker.
        opened = [p["upstream"] for k, p in env.events if k == "breaker" and p["to"] == "open"]
        assert opened == ["unknown-ca", "wrong-name"]
        health = env.health()["routes"][0]["candidates"]
        assert health[0]["last_error"] == unknown.error and health[0]["state"] == "open"
    # Neither server ever got a request: the handshake failed before one was sent.
    assert tls_fake.requests == [] and other_name.requests == []
    assert len(plain.requests) == 2


def test_a_ca_file_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    spec = upstream("secure", "anthropic", "https://localhost:9", "main")
    config = GatewayConfig.model_validate(
        {
            "upstreams": [spec | {"ca_file": str(tmp_path / "missing.pem")}],
            "models": {"claude": ["secure/claude-fake-1"]},
        }
    )
    with (
        pytest.raises(ConfigError) as err,
        running_gateway(config, KeyRing(), MemorySink(), secrets={}),
    ):
        pass
    message = str(err.value)
    assert "gateway.upstreams[secure].ca_file" in message and "No such file" in message
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    config = config.model_copy(
        update={
            "upstreams": [
                config.upstreams[0].model_copy(update={"ca_file": str(tmp_path / "empty.pem")})
            ]
        }
    )
    with (
        pytest.raises(ConfigError, match="cannot use ca_file"),
        running_gateway(config, KeyRing(), MemorySink(), secrets={}),
    ):
        pass
    with pytest.raises(ValidationError, match="whose base_url is not https://"):
        GatewayConfig.model_validate(
            {"upstreams": [upstream("p", "openai", "http://127.0.0.1:9", ca_file="x.pem")]}
        )


def test_the_fake_provider_command_serves_https_to_rehearse_with(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = ca.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    command = [*OVERNIGHT, "fake-provider", "--tls-cert", str(cert), "--tls-key", str(key)]
    with started(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as fake:
        assert fake.stdout is not None
        url = fake.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:"), url
        banner = [fake.stdout.readline() for _ in range(3)]
        assert "clients must trust the CA that signed" in banner[2], banner
        port = url.rsplit(":", 1)[1]
        with gateway(
            [upstream("secure", "anthropic", f"https://localhost:{port}", "main", ca_file=ca_file)],
            {"claude": ["secure/claude-fake-1"]},
        ) as env:
            reply = env.anthropic().messages.create(model="claude", max_tokens=5, messages=HELLO)
            assert reply.content[0].text == "ok"  # type: ignore[union-attr]
        assert [a.outcome for a in env.sink.attempts] == ["ok"]
        _, err = stop(fake, wait=10)  # Ctrl-C
    assert fake.returncode == 0, err


def test_the_fake_provider_command_refuses_half_a_certificate(
    ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    only_cert = run_cli("fake-provider", "--tls-cert", str(cert), timeout=60)
    assert only_cert.returncode != 0
    assert "--tls-cert needs --tls-key" in only_cert.stderr + only_cert.stdout
    missing = run_cli("fake-provider", "--tls-cert", str(cert), "--tls-key", str(key), timeout=60)
    assert f"--tls-key: no such file: {key}" in missing.stderr + missing.stdout
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))  # another cert's key
    mismatched = run_cli(
        "fake-provider", "--tls-cert", str(cert), "--tls-key", str(key), timeout=60
    )
    assert mismatched.returncode != 0
    assert f"cannot use {cert} with {key}" in mismatched.stderr + mismatched.stdout
