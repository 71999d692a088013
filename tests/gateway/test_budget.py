"""Budgets and observability through the gateway: concurrent requests never overrun a
limit, an exhausted budget is a clear error in the client's protocol, and every
request leaves an OpenTelemetry span with a child per attempt."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from overnight.gateway.meter import Budgets
from overnight.org.gateway import BudgetsConfig
from overnight.testing.fake_provider import FakeProvider
from overnight.testing.replies import Reply, Usage
from tests.helpers.gateway import HELLO, gateway, upstream

# $100 per million tokens: a request of ~100 bytes and max_tokens=20 reserves ~$0.012.
PRICES = {
    "claude-fake-1": {"input": 100, "output": 100},
    "gpt-fake-1": {"input": 100, "output": 100},
}


def test_concurrent_requests_never_overrun_the_org_budget() -> None:
    limit = 0.05
    threads = 12
    with FakeProvider("anthropic") as a:
        # Every request overlaps every other: a check-then-spend gateway would admit all 12.
        a.fault("delay", seconds=0.3, times=threads)
        for _ in range(threads):
            a.enqueue(Reply(text="ok", usage=Usage(input_tokens=60, output_tokens=20)))
        with gateway(
            [upstream("a", "anthropic", a.url, "main")],
            {"claude": ["a/claude-fake-1"]},
            prices=PRICES,
            budgets={"org": {"total_usd": limit}},
        ) as env:
            client = env.anthropic()
            barrier = threading.Barrier(threads)
            results: list[Any] = []

            def one() -> None:
                barrier.wait()
                try:
                    results.append(
                        client.messages.create(model="claude", max_tokens=20, messages=HELLO)
                    )
                except anthropic.APIStatusError as exc:
                    results.append(exc)

            workers = [threading.Thread(target=one) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(30)
            served = [r for r in results if isinstance(r, anthropic.types.Message)]
            refused = [r for r in results if isinstance(r, anthropic.APIStatusError)]
            assert len(served) + len(refused) == threads
            assert 1 <= len(served) < threads and refused
            for exc in refused:
                assert exc.status_code == 402
                assert exc.body["error"]["type"] == "billing_error"  # type: ignore[index]
                assert "budget exhausted: the org may spend $0.0500 in total" in exc.message
            spent = sum(x.cost_usd or 0 for x in env.sink.attempts)
            assert spent == pytest.approx(len(served) * 80 * 100 / 1e6)
            assert spent <= limit
            assert env.url.gateway.budgets.spent() == pytest.approx(spent)
            assert env.kinds().count("budget_exhausted") == len(refused)


def test_agent_daily_budget_is_an_openai_error_and_resets_next_day() -> None:
    today = [date(2026, 11, 22)]
    config = BudgetsConfig.model_validate({"agent": {"daily_usd": 0.03}})
    budgets = Budgets(config, today=lambda: today[0])
    with (
        FakeProvider("openai") as o,
        gateway(
            [upstream("o", "openai", o.url)],
            {"gpt": ["o/gpt-fake-1"]},
            prices=PRICES,
            ledger=budgets,
        ) as env,
    ):
        client = env.openai()
        for _ in range(20):
            o.enqueue(Reply(text="ok", usage=Usage(input_tokens=10, output_tokens=10)))
        served = 0
        with pytest.raises(openai.APIStatusError) as err:
            for _ in range(20):
                client.chat.completions.create(model="gpt", messages=HELLO, max_tokens=20)
                served += 1
        assert err.value.status_code == 402 and err.value.code == "insufficient_quota"
        assert "agent 'alice' may spend $0.0300 today (UTC)" in err.value.message
        assert budgets.spent("alice", today[0]) <= 0.03
        assert served >= 2
        today[0] = date(2026, 11, 23)
        client.chat.completions.create(model="gpt", messages=HELLO, max_tokens=20)


def test_spans_per_request_and_attempt_with_gen_ai_attributes() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with FakeProvider("anthropic") as a1, FakeProvider("anthropic") as a2:
        a1.fault("status", code=529)
        a2.enqueue(
            Reply(
                text="hi",
                usage=Usage(
                    input_tokens=5, output_tokens=3, cache_read_tokens=50, cache_write_tokens=7
                ),
            )
        )
        with gateway(
            [upstream("a1", "anthropic", a1.url, "k"), upstream("a2", "anthropic", a2.url, "k")],
            {"claude": ["a1/claude-sonnet-4-5", "a2/claude-sonnet-4-5"]},
            tracer_provider=provider,
        ) as env:
            client = env.anthropic(default_headers={"x-overnight-trial": "t-42"})
            client.messages.create(model="claude", max_tokens=10, messages=HELLO)
            env.sink.wait_for(lambda attempts: len(attempts) == 2)
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    attempts = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert request.name == "chat claude"
    assert request.attributes is not None
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["overnight.agent"] == "alice"
    assert request.attributes["overnight.trial"] == "t-42"
    assert request.attributes["gen_ai.usage.input_tokens"] == 62
    assert len(attempts) == 2
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == request.context.span_id
    failed, served = sorted(attempts, key=lambda s: s.start_time or 0)
    assert failed.attributes is not None and served.attributes is not None
    assert failed.attributes["overnight.outcome"] == "failed_over"
    assert failed.attributes["error.type"] == "HTTP 529"
    assert served.attributes["gen_ai.provider.name"] == "anthropic"
    assert served.attributes["gen_ai.request.model"] == "claude-sonnet-4-5"
    assert served.attributes["gen_ai.response.model"] == "claude-sonnet-4-5"
    # The convention's input count includes cache reads and writes.
    assert served.attributes["gen_ai.usage.input_tokens"] == 62
    assert served.attributes["gen_ai.usage.output_tokens"] == 3
    assert served.attributes["overnight.credential"] == "k"
    assert served.attributes["overnight.cost_usd"] == pytest.approx(
        (5 * 3 + 3 * 15 + 50 * 0.3 + 7 * 3.75) / 1e6
    )
