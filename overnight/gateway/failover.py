"""Serving one call from its route: candidates in order, one attempt at a time.

Owns the failover loop (each candidate's credentials, rate limits, breakers,
brownout, the error when every candidate failed), one attempt (the protocol the
upstream is spoken to in, the request bytes and headers for it, the answer's
status judged: fail over, or the client's own error), the connections to the
upstreams, and metering each attempt (the meter's sink, metrics, its span).
Knows nothing about endpoints, keys, policy or budgets (`app.py`), nor how an
answer reaches the client (`relay.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import re
import ssl
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, Tracer

from overnight.costs.prices import PriceTable
from overnight.errors import ConfigError
from overnight.gateway import protocols
from overnight.gateway.asgi import Send, reply
from overnight.gateway.call import Call, Meter, Result, fail, failed
from overnight.gateway.codec import dumps
from overnight.gateway.meter import Attempt, MeterSink, Outcome
from overnight.gateway.protocols import (
    StreamWatch,
    Tokens,
    WireProtocol,
    error_message,
    kind_for_status,
)
from overnight.gateway.proxies import ProxyEnv, proxy_for
from overnight.gateway.relay import Relay, streamed_tokens
from overnight.gateway.router import Candidate, Credential, Failure, Router
from overnight.gateway.telemetry import Metrics, attempt_span, end_attempt_span
from overnight.gateway.upstream import (
    Origin,
    Response,
    UpstreamClient,
    UpstreamError,
    describe,
    origin_of,
    tls_context,
)
from overnight.org.gateway import GatewayConfig

log = logging.getLogger("overnight.gateway")

# 404: the candidate names a model its upstream does not serve (a config mistake the
# next candidate can cover, and health reports).
_FAILOVER_STATUS = {401, 403, 404, 408, 409, 429}


class Failover:
    """Serves calls from their routes; one per gateway, all state on its event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        prices: PriceTable,
        metrics: Metrics,
        sink: MeterSink,
        tracer: Tracer,
    ) -> None:
        self._router = router
        self._prices = prices
        self._metrics = metrics
        self._sink = sink
        self._tracer = tracer
        self._timeouts = config.timeouts
        self._origins = _origins(config)
        self._wires = {up.name: protocols.for_upstream(up) for up in config.upstreams}
        """Each upstream's protocols, the one for a client of any other first."""
        self._relay = Relay(router, config.timeouts)
        self._client: UpstreamClient | None = None

    def http(self) -> UpstreamClient:
        if self._client is None:
            self._client = UpstreamClient(self._timeouts.connect)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def serve(self, call: Call, send: Send) -> None:
        """Try the route's candidates in order until one answers the client."""
        now = self._router.now()
        errors: list[str] = []
        rate_limited: list[float] = []
        for cand in call.route.candidates:
            tried: set[Credential] = set()
            while (cred := cand.pick(now, tried)) is not None:
                tried.add(cred)
                call.attempts += 1
                result = await self._attempt(call, cand, cred, send)
                if result.final:
                    return
                errors.append(f"{cand.key} ({cred.name}): {result.error}")
                if result.failure == "rate_limited":
                    rate_limited.append(result.retry_after or 1.0)
                if result.failure not in ("rate_limited", "auth"):
                    break  # the upstream itself is in trouble: its other credentials would be too
                now = self._router.now()
        if not errors:
            wait = self._router.retry_after(call.route)
            retry = [(b"retry-after", _retry_header(wait))]
            if call.route.brownout:
                message = (
                    f"route {call.alias!r} is in brownout: every candidate is down "
                    f"(circuit open or credentials rotated out); retry in {wait:.0f}s"
                )
                await fail(call, send, 503, "overloaded", message, retry)
            else:
                message = (
                    f"every candidate of {call.alias!r} is rate-limited or waiting for its "
                    f"breaker's probe; retry in {wait:.0f}s"
                )
                await fail(call, send, 429, "rate_limit", message, retry)
            return
        summary = "; ".join(errors)
        if len(rate_limited) == len(errors):
            wait = min(rate_limited)
            await fail(
                call,
                send,
                429,
                "rate_limit",
                f"every candidate of {call.alias!r} is rate-limited: {summary}",
                [(b"retry-after", _retry_header(wait))],
            )
            return
        # The soonest a candidate may be tried again: a breaker half-opens or a
        # Retry-After runs out (at least 1 s, as for a brownout).
        wait = self._router.retry_after(call.route)
        await fail(
            call,
            send,
            503,
            "overloaded",
            f"every candidate of {call.alias!r} failed: {summary}",
            [(b"retry-after", _retry_header(wait))],
        )

    # --- one attempt -------------------------------------------------------------------

    def _upstream_body(self, call: Call, cand: Candidate, wire: WireProtocol) -> bytes:
        model = cand.model
        client = call.protocol
        if wire is client:
            return _rewrite(call, model)
        # Through Chat Completions, which every protocol converts to and from.
        chat = client.request_to_chat(client.strip_vendor_state(call.body), model)
        return dumps(wire.request_from_chat(chat, model))

    def _upstream_headers(self, call: Call, cred: Credential, wire: WireProtocol) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        wire.upstream_headers(headers, call.protocol, call.headers)
        headers.update(cred.auth_headers)
        return headers

    async def _attempt(self, call: Call, cand: Candidate, cred: Credential, send: Send) -> Result:
        client = call.protocol
        wires = self._wires[cand.upstream.name]
        wire = client if client in wires else wires[0]
        same = wire is client
        path = wire.path
        if same and call.query and wire.forwards_query:
            path += "?" + call.query.decode("latin-1")
        meter = Meter(started=time.perf_counter(), started_at=datetime.now(UTC))
        span = (
            INVALID_SPAN
            if call.span is INVALID_SPAN
            else attempt_span(
                self._tracer,
                call.span,
                "chat",  # gen_ai.operation.name
                cand.upstream.protocol,  # gen_ai.provider.name: the upstream's kind
                cand.model,
                cand.upstream.name,
            )
        )
        outcome: Outcome = "failed_over"
        result = Result(final=False)
        watch: StreamWatch | None = None
        response: Response | None = None
        try:
            try:
                body = self._upstream_body(call, cand, wire)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # A request too odd to translate is the client's to fix; the traceback
                # is logged in case it is ours.
                log.exception("cannot translate a %s request for %s", client.name, cand.key)
                outcome = "rejected"
                self._router.neutral(cand, cred)
                message = f"cannot translate this request for {cand.key}: {exc!r}"
                await fail(call, send, 400, "invalid", message)
                result = Result(final=True, status=400, error=message)
                return result
            headers = self._upstream_headers(call, cred, wire)
            first_byte = self._timeouts.first_byte
            try:
                response = await self.http().post(
                    self._origins[cand.upstream.name], path, headers, body, first_byte
                )
                meter.status = response.status
                if response.status >= 400:
                    left = first_byte - (time.perf_counter() - meter.started)
                    error_raw = await response.read(left)
            except TimeoutError:
                result = failed(
                    self._router, cand, cred, "timeout", f"no answer within {first_byte:g}s"
                )
                return result
            except (UpstreamError, OSError) as exc:
                result = failed(self._router, cand, cred, "connect", describe(exc))
                return result
            status = response.status
            if status >= 400:
                message = f"HTTP {status}: {error_message(error_raw)}"
                retry_after = _retry_after(response.headers)
                if status in _FAILOVER_STATUS or status >= 500:
                    failure: Failure = (
                        "auth"
                        if status in (401, 403)
                        else "rate_limited"
                        if status == 429
                        else "no_model"
                        if status == 404
                        else "overloaded"
                        if status in (503, 529)
                        else "server"
                    )
                    result = failed(self._router, cand, cred, failure, message, retry_after, status)
                    return result
                # The request itself is wrong: the client hears it in its own protocol.
                outcome = "rejected"
                self._router.neutral(cand, cred)
                payload = (
                    error_raw
                    if same
                    else client.error_body(kind_for_status(status), error_message(error_raw))
                )
                call.status, call.error = status, message
                await reply(send, status, payload)
                result = Result(final=True, status=status, error=message)
                return result
            if call.stream:
                watch = wire.watch(drop_usage_chunk=same and client.injects_usage(call.body))
                outcome, result = await self._relay.stream(
                    call, cand, cred, wire, response, watch, meter, send
                )
            else:
                outcome, result = await self._relay.whole(
                    call, cand, cred, wire, response, meter, send
                )
            return result
        except asyncio.CancelledError:
            if call.client_gone:
                outcome = "cancelled"
                self._router.neutral(cand, cred)
            raise
        finally:
            if response is not None:
                if outcome in ("ok", "rejected") or response.complete:
                    # A complete answer (a 529 read in full included) leaves a healthy
                    # connection: back to the pool unless the upstream said close.
                    response.release()
                else:
                    response.close()  # mid-answer: closing is what cancels the upstream
            if watch is not None and meter.tokens is None:
                meter.tokens, meter.estimated = streamed_tokens(watch, call)
            self._record(call, cand, cred, wire, outcome, result, meter, span)

    def _record(
        self,
        call: Call,
        cand: Candidate,
        cred: Credential,
        wire: WireProtocol,
        outcome: Outcome,
        result: Result,
        meter: Meter,
        span: Span,
    ) -> None:
        tokens = meter.tokens or Tokens()
        cost = self._prices.cost(
            cand.upstream.name,
            cand.model,
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write,
        )
        billed = tokens.total_input + tokens.output > 0
        attempt = Attempt(
            request_id=call.request_id,
            attempt=call.attempts,
            agent=call.agent,
            trial=call.trial,
            route=call.alias,
            upstream=cand.upstream.name,
            model=cand.model,
            credential=cred.name,
            client_protocol=call.protocol.name,
            upstream_protocol=wire.name,
            stream=call.stream,
            outcome=outcome,
            status=meter.status,
            error=result.error,
            started_at=meter.started_at,
            latency_s=time.perf_counter() - meter.started,
            ttft_s=meter.ttft,
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write,
            reasoning_tokens=tokens.reasoning,
            usage_estimated=meter.estimated,
            cost_usd=cost.usd if billed or not cost.unpriced else None,
            unpriced=cost.unpriced and billed,
        )
        if attempt.cost_usd:
            call.cost += attempt.cost_usd
        call.tokens = Tokens(
            call.tokens.input + tokens.input,
            call.tokens.output + tokens.output,
            call.tokens.cache_read + tokens.cache_read,
            call.tokens.cache_write + tokens.cache_write,
            call.tokens.reasoning + tokens.reasoning,
        )
        self._metrics.attempt(attempt)
        if span is not INVALID_SPAN:
            end_attempt_span(span, attempt, meter.response_model)
        try:
            self._sink.record(attempt)
        except Exception:
            log.exception("the meter sink failed to record attempt %s", call.request_id)


# --- helpers -----------------------------------------------------------------------------


def _retry_header(seconds: float) -> bytes:
    return str(max(1, math.ceil(seconds))).encode()


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _origins(config: GatewayConfig) -> dict[str, Origin]:
    """Where each upstream is, and how it is reached (TLS verification, proxy), by name.

    A `ca_file` that cannot be used, or a bad proxy variable, stops the start here.
    """
    proxies = ProxyEnv.read()
    contexts: dict[str | None, ssl.SSLContext] = {}
    origins = {}
    for up in config.upstreams:
        tls = None
        if up.root.startswith("https://"):
            if up.ca_file not in contexts:
                try:
                    contexts[up.ca_file] = tls_context(up.ca_file)
                except ssl.SSLError as exc:
                    raise _ca_file_error(up.name, up.ca_file, exc.reason or str(exc)) from None
                except OSError as exc:
                    raise _ca_file_error(up.name, up.ca_file, exc.strerror or str(exc)) from None
            tls = contexts[up.ca_file]
        origin = origin_of(up.root, tls=tls)
        proxy = proxy_for(origin.scheme, origin.host, origin.port, up.proxy, proxies)
        origins[up.name] = dataclasses.replace(origin, proxy=proxy) if proxy else origin
    return origins


def _ca_file_error(upstream: str, ca_file: str | None, reason: str) -> ConfigError:
    return ConfigError(
        "overnight.toml",
        f"cannot use ca_file {ca_file!r} of upstream {upstream!r}: {reason}",
        field=f"gateway.upstreams[{upstream}].ca_file",
        fix="point it at a PEM file of the CA certificate(s) that signed the server's certificate",
    )


@functools.lru_cache(maxsize=1024)
def _model_value(alias: str) -> re.Pattern[bytes]:
    """`"model": "<alias>"` as it may appear in a client's JSON body."""
    return re.compile(rb'"model"\s*:\s*' + re.escape(json.dumps(alias).encode()))


def _rewrite(call: Call, model: str) -> bytes:
    """The client's own bytes for the upstream, with only what must change changed.

    The model name is replaced in place when it occurs once as a key's value;
    a chat stream that did not ask for usage gets `stream_options` so it can be
    metered. Anything less simple is re-serialized.
    """
    raw = call.raw
    inject = call.stream and call.protocol.injects_usage(call.body)
    if model != call.alias:
        found = list(_model_value(call.alias).finditer(raw))
        if len(found) != 1:
            return _reserialize(call, model, inject)
        m = found[0]
        raw = raw[: m.start()] + b'"model":' + json.dumps(model).encode() + raw[m.end() :]
    if inject:
        if "stream_options" in call.body:
            return _reserialize(call, model, inject)
        brace = raw.find(b"{")
        raw = raw[: brace + 1] + b'"stream_options":{"include_usage":true},' + raw[brace + 1 :]
    return raw


def _reserialize(call: Call, model: str, inject: bool) -> bytes:
    body = dict(call.body, model=model)
    if inject:
        options = body.get("stream_options")
        body["stream_options"] = (dict(options) if isinstance(options, dict) else {}) | {
            "include_usage": True
        }
    return dumps(body)
