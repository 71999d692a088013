"""Observability of the gateway: Prometheus counters and OpenTelemetry spans.

Owns the metric families served at `/metrics` (kept in plain dicts and
rendered as Prometheus text, no client library) and the span attributes of the
`gen_ai.*` semantic conventions. Spans go through `opentelemetry-api` only: a
no-op until the process configures an SDK and exporter, so they cost next to
nothing when off. Knows nothing about HTTP or routing.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from overnight.gateway.meter import Attempt

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(_BUCKETS) and value > _BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.total += value
        self.n += 1


_HELP: dict[str, tuple[str, str]] = {
    "overnight_gateway_requests_total": ("counter", "Client requests by route and status."),
    "overnight_gateway_attempts_total": ("counter", "Upstream attempts by outcome."),
    "overnight_gateway_tokens_total": ("counter", "Tokens by upstream, model and kind."),
    "overnight_gateway_cost_usd_total": ("counter", "Priced spend by agent, USD."),
    "overnight_gateway_unpriced_attempts_total": (
        "counter",
        "Attempts whose model has no price.",
    ),
    "overnight_gateway_request_seconds": ("histogram", "Client request duration."),
    "overnight_gateway_ttft_seconds": ("histogram", "Time to first token per attempt."),
    "overnight_gateway_breaker_open": ("gauge", "1 while a credential's breaker is open."),
    "overnight_gateway_route_brownout": (
        "gauge",
        "1 while every candidate of a route is down.",
    ),
}


class Metrics:
    """Counters, gauges and histograms by label set; `render` writes Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)

    def inc(self, name: str, labels: Labels, by: float = 1.0) -> None:
        family = self._values[name]
        family[labels] = family.get(labels, 0.0) + by

    def set(self, name: str, labels: Labels, value: float) -> None:
        self._values[name][labels] = value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        family = self._hist[name]
        hist = family.get(labels)
        if hist is None:
            hist = family[labels] = _Histogram()
        hist.observe(value)

    def attempt(self, a: Attempt) -> None:
        self.inc(
            "overnight_gateway_attempts_total",
            (("upstream", a.upstream), ("credential", a.credential), ("outcome", a.outcome)),
        )
        for kind, n in (
            ("input", a.input_tokens),
            ("output", a.output_tokens),
            ("cache_read", a.cache_read_tokens),
            ("cache_write", a.cache_write_tokens),
            ("reasoning", a.reasoning_tokens),
        ):
            if n:
                self.inc(
                    "overnight_gateway_tokens_total",
                    (("upstream", a.upstream), ("model", a.model), ("kind", kind)),
                    n,
                )
        if a.cost_usd:
            self.inc("overnight_gateway_cost_usd_total", (("agent", a.agent),), a.cost_usd)
        if a.unpriced:
            self.inc(
                "overnight_gateway_unpriced_attempts_total",
                (("upstream", a.upstream), ("model", a.model)),
            )
        if a.ttft_s is not None:
            self.observe("overnight_gateway_ttft_seconds", (("upstream", a.upstream),), a.ttft_s)

    def render(self) -> str:
        lines: list[str] = []
        names = sorted(set(self._values) | set(self._hist))
        for name in names:
            kind, text = _HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(self._values.get(name, {}).items()):
                lines.append(f"{name}{_fmt(labels)} {value:g}")
            for labels, hist in sorted(self._hist.get(name, {}).items()):
                cumulative = 0
                for bound, count in zip((*_BUCKETS, "+Inf"), hist.counts, strict=True):
                    cumulative += count
                    le = (*labels, ("le", str(bound)))
                    lines.append(f"{name}_bucket{_fmt(le)} {cumulative}")
                lines.append(f"{name}_sum{_fmt(labels)} {hist.total:g}")
                lines.append(f"{name}_count{_fmt(labels)} {hist.n}")
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


# --- tracing -------------------------------------------------------------------------------


def tracer(provider: TracerProvider | None = None) -> Tracer:
    return trace.get_tracer("overnight.gateway", tracer_provider=provider)


def request_span(
    t: Tracer,
    operation: str,
    alias: str,
    agent: str,
    trial: str | None,
    stream: bool,
    headers: dict[str, str] | None = None,
) -> Span:
    """The span of one client request; a child of the caller's span when the request
    carries a W3C `traceparent` (the llm runtime sends its trial's)."""
    parent = extract(headers) if headers and "traceparent" in headers else None
    span = t.start_span(f"{operation} {alias}", kind=SpanKind.SERVER, context=parent)
    if span.is_recording():
        span.set_attributes(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": alias,
                "overnight.agent": agent,
                "overnight.stream": stream,
            }
        )
        if trial:
            span.set_attribute("overnight.trial", trial)
    return span


def attempt_span(
    t: Tracer, parent: Span, operation: str, provider: str, model: str, upstream: str
) -> Span:
    span = t.start_span(
        f"{operation} {model}",
        kind=SpanKind.CLIENT,
        context=trace.set_span_in_context(parent),
    )
    if span.is_recording():
        span.set_attributes(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "overnight.upstream": upstream,
            }
        )
    return span


def end_attempt_span(span: Span, a: Attempt, response_model: str | None) -> None:
    if span.is_recording():
        attrs: dict[str, Any] = {
            "overnight.agent": a.agent,
            "overnight.credential": a.credential,
            "overnight.outcome": a.outcome,
            "overnight.attempt": a.attempt,
            # The convention counts every input token, cached or not.
            "gen_ai.usage.input_tokens": a.total_input_tokens,
            "gen_ai.usage.output_tokens": a.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": a.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": a.cache_write_tokens,
        }
        if a.reasoning_tokens:
            attrs["gen_ai.usage.reasoning.output_tokens"] = a.reasoning_tokens
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        if a.trial:
            attrs["overnight.trial"] = a.trial
        if a.status is not None:
            attrs["http.response.status_code"] = a.status
        if a.cost_usd is not None:
            attrs["overnight.cost_usd"] = a.cost_usd
        span.set_attributes(attrs)
        if a.outcome not in ("ok", "cancelled"):
            span.set_attribute("error.type", a.error.split(":")[0] if a.error else a.outcome)
            span.set_status(Status(StatusCode.ERROR, a.error or a.outcome))
    span.end()


def end_request_span(span: Span, status: int, error: str | None, usage: dict[str, int]) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        for key, value in usage.items():
            span.set_attribute(key, value)
        if error is not None:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR, error))
    span.end()
