"""The gateway as a lab runs it: `overnight gateway`, virtual keys, attempts and budgets in the store."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import anthropic
import pytest

from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, Usage
from tests.helpers.processes import OVERNIGHT, run_cli, start, stop


@contextmanager
def _gateway(lab: Path, env: dict[str, str]) -> Iterator[str]:
    proc = start(
        [*OVERNIGHT, "gateway", str(lab)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()
        assert first.startswith("gateway: http://127.0.0.1:"), first + proc.stderr.read()
        yield first.split("gateway: ")[1].strip()
    finally:
        out, err = stop(proc, first=signal.SIGTERM, wait=30)
        assert proc.returncode == 0, err
        assert "gateway stopped" in out


def _ask(url: str, key: str) -> anthropic.types.Message:
    with anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client:
        return client.messages.create(
            model="smart", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )


def test_keys_attempts_and_budgets_survive_a_restart(
    tmp_path: Path, coder_lab: Callable[[str, float], Path]
) -> None:
    with FakeProvider("anthropic", api_keys={"sk-upstream"}) as fake:
        fake.enqueue(Reply(text="first", usage=Usage(input_tokens=1000, output_tokens=100)))
        fake.enqueue(Reply(text="second", usage=Usage(input_tokens=10, output_tokens=10)))
        lab = coder_lab(fake.url, 0.011)
        env = {"FAKE_ANTHROPIC_KEY": "sk-upstream"}
        assert run_cli("run", str(lab), "--trials", "1", env=env).returncode == 0
        with _gateway(lab, env) as url:
            key = (lab / ".overnight" / "keys" / "coder").read_text().strip()
            assert oct((lab / ".overnight" / "keys" / "coder").stat().st_mode)[-3:] == "600"
            assert _ask(url, key).content[0].text == "first"  # type: ignore[union-attr]
            with pytest.raises(anthropic.AuthenticationError):
                _ask(url, "ovn-not-a-key")
        # the gateway never sends our virtual key upstream, only the provider credential
        assert {r["headers"].get("x-api-key") for r in fake.requests} == {"sk-upstream"}
        store = open_store(store_url(lab))
        try:
            attempts = store.attempts("toy", agent="coder")
            assert len(attempts) == 1
            a = attempts[0]
            assert (a["upstream"], a["model"], a["credential"], a["outcome"]) == (
                "primary", "claude-fake", "main", "ok",
            )  # fmt: skip
            assert (a["input_tokens"], a["output_tokens"]) == (1000, 100)
            assert a["cost_usd"] == pytest.approx(0.011)
            assert key not in str(store.key_hashes("toy"))  # only hashes are kept
        finally:
            store.close()
        status = json.loads(run_cli("status", str(lab), "--json").stdout)
        assert status["spend_usd"]["by_agent"]["coder"] == pytest.approx(0.011)
        assert (
            "LLM spend through the gateway: $0.0110 (coder $0.0110)"
            in run_cli("status", str(lab)).stdout
        )
        # after a restart the same key still works, and the spend is remembered:
        # the agent's $0.011 budget is used up, so the next request is refused
        with _gateway(lab, env) as url:
            with pytest.raises(anthropic.APIStatusError) as refused:
                _ask(url, key)
            assert refused.value.status_code == 402
            assert "budget exhausted" in str(refused.value)
        assert len([r for r in fake.requests if r["path"].startswith("/v1/messages")]) == 1


def test_a_missing_credential_is_a_clear_error(
    tmp_path: Path, coder_lab: Callable[[str, float], Path]
) -> None:
    lab = coder_lab("http://127.0.0.1:9", 1.0)
    env = {k: v for k, v in os.environ.items() if k != "FAKE_ANTHROPIC_KEY"}
    result = subprocess.run(
        [*OVERNIGHT, "gateway", str(lab)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert "FAKE_ANTHROPIC_KEY is not set" in result.stderr and "primary" in result.stderr


def test_overnight_run_serves_the_gateway_while_it_runs(
    tmp_path: Path, coder_lab: Callable[[str, float], Path]
) -> None:
    lab = coder_lab("http://127.0.0.1:9", 1.0)
    result = run_cli("run", str(lab), "--trials", "1", env={"FAKE_ANTHROPIC_KEY": "k"})
    assert result.returncode == 0, result.stderr
    assert "gateway: http://127.0.0.1:" in result.stdout
    assert (lab / ".overnight" / "keys" / "coder").is_file()


class _Collector(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_spans_are_exported_over_otlp_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coder_lab: Callable[[str, float], Path]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from overnight.gateway.service import lab_gateway
    from overnight.org import load_org

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "k")
    try:
        with FakeProvider("anthropic") as fake:
            lab = coder_lab(fake.url, 1.0)
            org = load_org(lab)
            store = open_store(store_url(lab))
            assert org.config.gateway is not None
            gateway = lab_gateway(org.config.gateway, store, "toy", lab, {"coder": None}, None)
            with gateway as (url, keys):
                key = keys["coder"].read_text().strip()
                headers = {"x-overnight-trial": "42"}
                with anthropic.Anthropic(
                    base_url=url, api_key=key, max_retries=0, default_headers=headers
                ) as client:
                    client.messages.create(
                        model="smart", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
                    )
            store.close()
    finally:
        collector.shutdown()
        collector.server_close()
    spans = []
    for body in _Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    attrs = {span.name: {a.key: a.value for a in span.attributes} for span in spans}
    assert len(spans) >= 2, [s.name for s in spans]
    request_span = next(s for s in spans if not s.parent_span_id)
    child = next(s for s in spans if s.parent_span_id == request_span.span_id)
    a, r = attrs[child.name], attrs[request_span.name]
    assert r["gen_ai.request.model"].string_value == "smart"  # the alias the client asked for
    assert a["gen_ai.request.model"].string_value == "claude-fake"  # what this attempt sent
    assert a["gen_ai.provider.name"].string_value == "anthropic"
    assert a["gen_ai.usage.input_tokens"].int_value > 0
    assert r["overnight.agent"].string_value == "coder"
    assert r["overnight.trial"].string_value == "42"
