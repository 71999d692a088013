"""The gateway's ASGI app: every LLM call of every agent, in and out.

Owns the HTTP side: the endpoints, virtual-key checks, reading and checking a
request, the failover loop over a route's candidates, relaying an answer
(bytes unchanged when client and upstream speak the same protocol, through
`translate.py` when they do not), the explicit error that ends a stream which
fails after its first byte, cancelling the upstream when the client leaves,
and handing every attempt to metering, budgets, metrics and spans.
Knows nothing about the store, the org or the lab: they are injected.

Raw ASGI rather than a framework, and a small purpose-built client
(`upstream.py`) for the upstream side: on a 2-core box both were measured to
matter for the added-latency target.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from opentelemetry import trace as otel_trace
from opentelemetry.trace import INVALID_SPAN, Span, TracerProvider

from overnight.errors import ConfigError, UserError
from overnight.gateway import translate
from overnight.gateway.config import Secret, read_secrets
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import (
    Attempt,
    BudgetExhausted,
    Budgets,
    MeterSink,
    Outcome,
    Reservation,
)
from overnight.gateway.prices import PriceTable
from overnight.gateway.protocols import (
    ClientProtocol,
    ErrorKind,
    Malformed,
    SSEReader,
    StreamFacts,
    StreamWatch,
    Tokens,
    UpstreamWire,
    dumps,
    error_body,
    error_message,
    kind_for_status,
    loads,
    sse,
    stream_error,
    tokens_of_body,
)
from overnight.gateway.proxies import ProxyEnv, proxy_for
from overnight.gateway.router import Candidate, Credential, Events, Failure, Route, Router
from overnight.gateway.telemetry import (
    Metrics,
    attempt_span,
    end_attempt_span,
    end_request_span,
    request_span,
    tracer,
)
from overnight.gateway.upstream import (
    Origin,
    Response,
    UpstreamClient,
    UpstreamError,
    origin_of,
    tls_context,
)
from overnight.org.gateway import GatewayConfig

log = logging.getLogger("overnight.gateway")
# Request ids need to be unique, not secret: no system call (os.urandom) per request.
_random_bits = random.Random().getrandbits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLIENT_PATHS: dict[str, ClientProtocol] = {
    "/v1/messages": "anthropic",
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
}
_UPSTREAM_PATHS: dict[UpstreamWire, str] = {
    "anthropic": "/v1/messages",
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
}
# translate.strip_vendor_state names Chat Completions "openai".
_STRIP_NAME: dict[ClientProtocol, str] = {
    "anthropic": "anthropic",
    "chat": "openai",
    "responses": "responses",
}
# 404: the candidate names a model its upstream does not serve (a config mistake the
# next candidate can cover, and health reports).
_FAILOVER_STATUS = {401, 403, 404, 408, 409, 429}
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


def _noop_events(kind: str, payload: dict[str, Any]) -> None:
    return None


class _ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass(slots=True)
class _Call:
    """One client request on its way through the gateway."""

    request_id: str
    protocol: ClientProtocol
    agent: str
    trial: str | None
    alias: str
    route: Route
    stream: bool
    raw: bytes
    body: dict[str, Any]
    query: bytes
    headers: dict[str, str]
    span: Span
    reservation: Reservation | None = None
    cost: float = 0.0
    attempts: int = 0
    tokens: Tokens = field(default_factory=Tokens)
    client_gone: bool = False
    done: bool = False
    """The whole response has been sent: a disconnect after it is no cancellation."""
    status: int = 0
    error: str | None = None


@dataclass(slots=True)
class _Result:
    """How an attempt ended, for the failover loop: `final` means the client has its answer."""

    final: bool
    failure: Failure | None = None
    error: str | None = None
    retry_after: float | None = None
    status: int | None = None


@dataclass(slots=True)
class _Meter:
    """What is known about one attempt while it runs; becomes an `Attempt` at the end."""

    started: float
    started_at: datetime
    ttft: float | None = None
    status: int | None = None
    tokens: Tokens | None = None
    estimated: bool = False
    response_model: str | None = None


class Gateway:
    """The ASGI app. One instance per process; all state lives on its event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyRing,
        sink: MeterSink,
        events: Events | None = None,
        *,
        secrets: dict[tuple[str, str], Secret] | None = None,
        budgets: Budgets | None = None,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracer_provider: TracerProvider | None = None,
        governor: Governance | None = None,
    ) -> None:
        self.config = config
        self.governor = governor
        self.desk: Desk | None = None
        """Where agents' own processes submit trials (set by the command center)."""
        self.keys = keys
        self.sink = sink
        self._events = events or _noop_events
        self.metrics = Metrics()
        self.router = Router(
            config, read_secrets(config) if secrets is None else secrets, self._emit, clock
        )
        self.budgets = budgets or Budgets(config.budgets)
        self._budgets_on = self.budgets.enabled
        self.prices = prices or PriceTable(config.prices)
        self._tracer = tracer(tracer_provider)
        self._traced = tracer_provider is not None
        self._traced_checked = -math.inf
        self._client: UpstreamClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origins = _origins(config)
        self._timeouts = config.timeouts

    # --- plumbing ----------------------------------------------------------------------

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            self._events(kind, payload)
        except Exception:
            log.exception("the gateway's events callback failed on %s", kind)

    def _tracing(self) -> bool:
        """Whether spans go anywhere: a provider was given, or one is set for the process.

        Without one every span is a no-op that still costs (a request's four, about
        4 us): then there are none. A process's provider, once set, stays; whether
        it is set yet is asked at most once a second.
        """
        if self._traced:
            return True
        now = time.monotonic()
        if now - self._traced_checked >= 1.0:
            self._traced_checked = now
            provider = otel_trace.get_tracer_provider()
            self._traced = not isinstance(provider, otel_trace.ProxyTracerProvider)
        return self._traced

    def _http(self) -> UpstreamClient:
        if self._client is None:
            self._client = UpstreamClient(self._timeouts.connect)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._http()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(_GOVERNANCE):
            await self._governance(path[len(_GOVERNANCE) :], method, scope, receive, send)
            return
        protocol = _CLIENT_PATHS.get(path)
        if protocol is not None:
            if method != "POST":
                await _reply(send, 405, error_body(protocol, "invalid", f"use POST {path}"))
                return
            await self._proxy(protocol, scope, receive, send)
            return
        if method == "GET" and path == "/health":
            health = self.router.health() | {"budgets": self.budgets.snapshot()}
            await _reply(send, 200, json.dumps(health).encode())
        elif method == "GET" and path == "/metrics":
            await _reply(
                send,
                200,
                self._render_metrics().encode(),
                content_type=b"text/plain; version=0.0.4; charset=utf-8",
            )
        elif method == "GET" and path == "/v1/models":
            headers = _headers(scope)
            guess: ClientProtocol = "anthropic" if "x-api-key" in headers else "chat"
            if self.keys.verify(_presented_key(headers)) is None:
                await _reply(send, 401, error_body(guess, "auth", _BAD_KEY))
                return
            await _reply(send, 200, json.dumps(self._models()).encode())
        else:
            guess = "anthropic" if path.startswith("/v1/messages") else "chat"
            await _reply(send, 404, error_body(guess, "not_found", f"no endpoint {method} {path}"))

    async def _governance(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The command center's answers to agents' own processes, by their virtual key:
        `POST hook` (Claude Code's PreToolUse hook), `POST judge` (`overnight try`
        asking about its trial), `GET approvals/ID` (how a human answered), and the
        trial desk: `POST trials`, `GET trials/N?wait=S`, `POST trials/N/stop`, `GET notes`."""
        agent = self.keys.verify(_presented_key(_headers(scope)))
        if agent is None:
            await _reply(send, 401, _problem(_BAD_KEY))
            return
        if path in ("trials", "notes") or path.startswith("trials/"):
            await self._desk(agent, path, method, scope, receive, send)
            return
        governor = self.governor
        if governor is None:
            await _reply(send, 503, _problem("this gateway runs without governance"))
            return
        loop = asyncio.get_running_loop()
        try:
            if method == "POST" and path in ("hook", "judge"):
                raw = await _read_body(receive, 1 << 20, _headers(scope).get("content-length"))
                body = None if raw is None else loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                ask = governor.hook if path == "hook" else governor.judge
                answer = await loop.run_in_executor(None, ask, agent, body)
            elif method == "GET" and path.startswith("approvals/"):
                found = await loop.run_in_executor(
                    None, governor.approval, agent, path[len("approvals/") :]
                )
                if found is None:
                    await _reply(send, 404, _problem(f"agent {agent} has no approval {path[10:]}"))
                    return
                answer = found
            else:
                await _reply(send, 404, _problem(f"no endpoint {method} {_GOVERNANCE}{path}"))
                return
        except ValueError as exc:
            await _reply(send, 400, _problem(str(exc)))
            return
        await _reply(send, 200, json.dumps(answer).encode())

    async def _desk(
        self, agent: str, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        desk = self.desk
        if desk is None:
            await _reply(send, 503, _problem("no trial desk here: is `overnight run` running?"))
            return
        loop = asyncio.get_running_loop()
        parts = path.split("/")
        try:
            if method == "POST" and parts == ["trials"]:
                raw = await _read_body(receive, 1 << 20, _headers(scope).get("content-length"))
                body = None if raw is None else loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                answer = await loop.run_in_executor(None, desk.submit, agent, body)
            elif method == "GET" and parts == ["notes"]:
                answer = await loop.run_in_executor(None, desk.notes, agent)
            elif len(parts) >= 2 and parts[1].isdigit() and method in ("GET", "POST"):
                number = int(parts[1])
                if method == "GET" and len(parts) == 2:
                    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
                    wait = float(query.get("wait", ["0"])[0])
                    found = await loop.run_in_executor(None, desk.trial, agent, number, wait)
                elif method == "POST" and parts[2:] == ["stop"]:
                    stopped = await loop.run_in_executor(None, desk.stop, agent, number)
                    found = {"stopped": number} if stopped else None
                else:
                    found = None
                if found is None:
                    await _reply(send, 404, _problem(f"agent {agent} has no trial {number} here"))
                    return
                answer = found
            else:
                await _reply(send, 404, _problem(f"no endpoint {method} {_GOVERNANCE}{path}"))
                return
        except ValueError as exc:
            await _reply(send, 400, _problem(str(exc)))
            return
        except UserError as exc:
            await _reply(send, 409, _problem(str(exc)))
            return
        await _reply(send, 200, json.dumps(answer).encode())

    def _models(self) -> dict[str, Any]:
        # One list that both SDKs read: Anthropic's fields and OpenAI's side by side.
        created = datetime(2025, 1, 1, tzinfo=UTC)
        data = [
            {
                "id": alias,
                "type": "model",
                "object": "model",
                "display_name": alias,
                "created_at": created.isoformat().replace("+00:00", "Z"),
                "created": int(created.timestamp()),
                "owned_by": "overnight",
            }
            for alias in self.router.routes
            if alias != "*"
        ]
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def _render_metrics(self) -> str:
        m = self.metrics
        for route in self.router.routes.values():
            m.set("overnight_gateway_route_brownout", (("route", route.alias),), route.brownout)
            for cand in route.candidates:
                for cred in cand.credentials:
                    open_ = cred.rotated_out or cred.breaker.state != "closed"
                    labels = (("upstream", cred.upstream), ("credential", cred.name))
                    m.set("overnight_gateway_breaker_open", labels, float(open_))
        return m.render()

    # --- one proxied request -------------------------------------------------------------

    async def _proxy(
        self, protocol: ClientProtocol, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = _headers(scope)
        agent = self.keys.verify(_presented_key(headers))
        if agent is None:
            await _reply(send, 401, error_body(protocol, "auth", _BAD_KEY))
            return
        limit = self.config.max_body
        try:
            raw = await _read_body(receive, limit, headers.get("content-length"))
        except _ClientGone:
            return
        if raw is None:
            message = f"request body is larger than the gateway's limit of {limit} bytes (max_body)"
            await _reply(send, 413, error_body(protocol, "too_large", message))
            return
        try:
            body = loads(raw)
        except ValueError as exc:
            message = f"request body is not valid JSON: {exc}"
            await _reply(send, 400, error_body(protocol, "invalid", message))
            return
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            message = 'request body must be a JSON object with a "model" string'
            await _reply(send, 400, error_body(protocol, "invalid", message))
            return
        alias: str = body["model"]
        route = self.router.route(alias)
        if route is None:
            known = ", ".join(sorted(self.router.routes)) or "none"
            message = f"model {alias!r} is not configured in [gateway.models]; known: {known}"
            await _reply(send, 404, error_body(protocol, "not_found", message))
            return
        stream = body.get("stream") is True
        trial = headers.get("x-overnight-trial") or None
        operation = "chat"
        call = _Call(
            request_id=f"{_random_bits(64):016x}",
            protocol=protocol,
            agent=agent,
            trial=trial,
            alias=alias,
            route=route,
            stream=stream,
            raw=raw,
            body=body,
            query=scope.get("query_string", b""),
            headers=headers,
            span=(
                request_span(self._tracer, operation, alias, agent, trial, stream, headers)
                if self._tracing()
                else INVALID_SPAN
            ),
        )
        if self.governor is not None:
            verdict = self.governor.llm(
                agent,
                alias,
                self._estimate(call),
                int(trial) if trial and trial.isdigit() else None,
            )
            if verdict.effect != "allow":
                call.span.end()
                message = f"denied by overnight's policy: {verdict.reason}"
                await _reply(send, 403, error_body(protocol, "forbidden", message))
                return
        started = time.perf_counter()
        try:
            if self._budgets_on:
                try:
                    call.reservation = self.budgets.reserve(agent, self._estimate(call))
                except BudgetExhausted as exc:
                    self._emit(
                        "budget_exhausted",
                        {
                            "agent": agent,
                            "scope": exc.scope,
                            "period": exc.period,
                            "limit_usd": exc.limit,
                            "committed_usd": exc.committed,
                        },
                    )
                    await self._fail(call, send, 402, "budget", str(exc))
                    return
            await self._guarded(call, scope, receive, send)
        finally:
            if call.reservation is not None:
                self.budgets.settle(call.reservation, call.cost)
            elapsed = time.perf_counter() - started
            status = call.status or 499
            self.metrics.inc(
                "overnight_gateway_requests_total",
                (("route", alias), ("protocol", protocol), ("status", str(status))),
            )
            self.metrics.observe("overnight_gateway_request_seconds", (("route", alias),), elapsed)
            if call.span is not INVALID_SPAN:
                end_request_span(
                    call.span,
                    status,
                    call.error,
                    {
                        "gen_ai.usage.input_tokens": call.tokens.total_input,
                        "gen_ai.usage.output_tokens": call.tokens.output,
                    },
                )

    async def _guarded(self, call: _Call, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve `call`, cancelling everything (the upstream request too) if the client leaves."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # The loop passed: without it both calls ask for it, a system call each on 3.11.
        task = asyncio.current_task(loop)
        assert task is not None

        def gone() -> None:
            if not call.done:
                call.client_gone = True
                task.cancel()

        # Our server tells of a departure by callback (`overnight.disconnect`); any other
        # ASGI server by an `http.disconnect` from `receive()`, which a task waits for.
        # The callback saves a task per request (~10 us of the loop's time).
        register = scope.get("extensions", {}).get("overnight.disconnect")
        watcher: asyncio.Task[None] | None = None
        if register is not None:
            register(gone)
        else:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone()

            watcher = loop.create_task(watch())
        try:
            await self._serve(call, send)
            # No await since the last send, so the watcher cannot have run after it.
            call.done = True
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            elif register is not None:
                register(None)

    def _estimate(self, call: _Call) -> float:
        """The most this request can cost on any of its candidates, in USD.

        Input: a token is at least one byte of the JSON body, so the body's size
        bounds the input tokens; output: the request's own maximum.
        """
        b = call.body
        max_out = (
            b.get("max_tokens") or b.get("max_completion_tokens") or b.get("max_output_tokens")
        )
        if not isinstance(max_out, int) or max_out <= 0:
            max_out = self.config.budgets.default_max_tokens
        worst = 0.0
        for cand in call.route.candidates:
            price = self.prices.lookup(cand.upstream.name, cand.model)
            if price is not None:
                worst = max(worst, (len(call.raw) * price.max_input + max_out * price.output) / 1e6)
        return worst

    async def _fail(
        self,
        call: _Call,
        send: Send,
        status: int,
        kind: ErrorKind,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        call.status, call.error = status, message
        await _reply(send, status, error_body(call.protocol, kind, message), extra=extra)

    async def _serve(self, call: _Call, send: Send) -> None:
        """Try the route's candidates in order until one answers the client."""
        now = self.router.now()
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
                now = self.router.now()
        if not errors:
            wait = self.router.retry_after(call.route)
            retry = [(b"retry-after", _retry_header(wait))]
            if call.route.brownout:
                message = (
                    f"route {call.alias!r} is in brownout: every candidate is down "
                    f"(circuit open or credentials rotated out); retry in {wait:.0f}s"
                )
                await self._fail(call, send, 503, "overloaded", message, retry)
            else:
                message = (
                    f"every candidate of {call.alias!r} is rate-limited or waiting for its "
                    f"breaker's probe; retry in {wait:.0f}s"
                )
                await self._fail(call, send, 429, "rate_limit", message, retry)
            return
        summary = "; ".join(errors)
        if len(rate_limited) == len(errors):
            wait = min(rate_limited)
            await self._fail(
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
        wait = self.router.retry_after(call.route)
        await self._fail(
            call,
            send,
            503,
            "overloaded",
            f"every candidate of {call.alias!r} failed: {summary}",
            [(b"retry-after", _retry_header(wait))],
        )

    # --- one attempt -------------------------------------------------------------------

    def _upstream_body(self, call: _Call, cand: Candidate, wire: UpstreamWire) -> bytes:
        model = cand.model
        if wire == call.protocol:
            return _rewrite(call, model)
        body = translate.strip_vendor_state(call.body, _STRIP_NAME[call.protocol])
        chat = (
            translate.responses_to_chat_request(body, model)
            if call.protocol == "responses"
            else body
        )
        out: dict[str, Any]
        if wire == "anthropic":
            out = translate.openai_to_anthropic_request(chat, model)
        elif call.protocol == "anthropic":
            out = translate.anthropic_to_openai_request(body, model)
        else:  # a Responses client on a Chat Completions upstream
            out = chat
            if call.stream:
                out["stream_options"] = {"include_usage": True}
        return dumps(out)

    def _wire(self, call: _Call, cand: Candidate) -> UpstreamWire:
        if cand.upstream.protocol == "anthropic":
            return "anthropic"
        if call.protocol == "responses" and cand.upstream.responses_api:
            return "responses"
        return "chat"

    def _upstream_headers(
        self, call: _Call, cred: Credential, wire: UpstreamWire
    ) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if wire == "anthropic":
            headers["anthropic-version"] = call.headers.get("anthropic-version", "2023-06-01")
            if call.protocol == "anthropic" and "anthropic-beta" in call.headers:
                headers["anthropic-beta"] = call.headers["anthropic-beta"]
        elif "openai-beta" in call.headers and call.protocol != "anthropic":
            headers["openai-beta"] = call.headers["openai-beta"]
        headers.update(cred.auth_headers)
        return headers

    async def _attempt(self, call: _Call, cand: Candidate, cred: Credential, send: Send) -> _Result:
        wire = self._wire(call, cand)
        same = wire == call.protocol
        path = _UPSTREAM_PATHS[wire]
        if same and call.query and wire == "anthropic":
            path += "?" + call.query.decode("latin-1")
        meter = _Meter(started=time.perf_counter(), started_at=datetime.now(UTC))
        span = (
            INVALID_SPAN
            if call.span is INVALID_SPAN
            else attempt_span(
                self._tracer,
                call.span,
                "chat",
                cand.upstream.protocol,
                cand.model,
                cand.upstream.name,
            )
        )
        outcome: Outcome = "failed_over"
        result = _Result(final=False)
        watch: StreamWatch | None = None
        response: Response | None = None
        try:
            try:
                body = self._upstream_body(call, cand, wire)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # A request too odd to translate is the client's to fix; the traceback
                # is logged in case it is ours.
                log.exception("cannot translate a %s request for %s", call.protocol, cand.key)
                outcome = "rejected"
                self.router.neutral(cand, cred)
                message = f"cannot translate this request for {cand.key}: {exc!r}"
                await self._fail(call, send, 400, "invalid", message)
                result = _Result(final=True, status=400, error=message)
                return result
            headers = self._upstream_headers(call, cred, wire)
            first_byte = self._timeouts.first_byte
            try:
                response = await self._http().post(
                    self._origins[cand.upstream.name], path, headers, body, first_byte
                )
                meter.status = response.status
                if response.status >= 400:
                    left = first_byte - (time.perf_counter() - meter.started)
                    error_raw = await response.read(left)
            except TimeoutError:
                result = self._failed(cand, cred, "timeout", f"no answer within {first_byte:g}s")
                return result
            except (UpstreamError, OSError) as exc:
                result = self._failed(cand, cred, "connect", _describe(exc))
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
                    result = self._failed(cand, cred, failure, message, retry_after, status)
                    return result
                # The request itself is wrong: the client hears it in its own protocol.
                outcome = "rejected"
                self.router.neutral(cand, cred)
                payload = (
                    error_raw
                    if same
                    else error_body(
                        call.protocol, kind_for_status(status), error_message(error_raw)
                    )
                )
                call.status, call.error = status, message
                await _reply(send, status, payload)
                result = _Result(final=True, status=status, error=message)
                return result
            if call.stream:
                watch = StreamWatch(wire, drop_usage_chunk=same and _injects_usage(call))
                outcome, result = await self._relay_stream(
                    call, cand, cred, wire, response, watch, meter, send
                )
            else:
                outcome, result = await self._relay_whole(
                    call, cand, cred, wire, response, meter, send
                )
            return result
        except asyncio.CancelledError:
            if call.client_gone:
                outcome = "cancelled"
                self.router.neutral(cand, cred)
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
                meter.tokens, meter.estimated = _streamed_tokens(watch, call)
            self._record(call, cand, cred, wire, outcome, result, meter, span)

    async def _relay_whole(
        self,
        call: _Call,
        cand: Candidate,
        cred: Credential,
        wire: UpstreamWire,
        response: Response,
        meter: _Meter,
        send: Send,
    ) -> tuple[Outcome, _Result]:
        meter.ttft = time.perf_counter() - meter.started
        # `idle` bounds the silence between two pieces of the body, not the whole body:
        # a long answer that keeps arriving is healthy, one that goes quiet is stalled.
        idle = self._timeouts.idle
        parts: list[bytes] = []
        try:
            while True:
                piece = await response.chunk(idle)
                if not piece:
                    break
                parts.append(piece)
        except TimeoutError:
            return "failed_over", self._failed(
                cand, cred, "stream", f"answer stalled: no data for {idle:g}s"
            )
        except (UpstreamError, OSError) as exc:
            return "failed_over", self._failed(
                cand, cred, "stream", f"answer cut: {_describe(exc)}"
            )
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            obj = loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            return "failed_over", self._failed(
                cand, cred, "stream", f"answer is not valid JSON: {data[:80]!r}"
            )
        meter.tokens = tokens_of_body(wire, obj)
        meter.response_model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if wire == call.protocol:
            payload = data
        else:
            payload = dumps(_translate_whole(call, wire, obj, cand.model))
        self.router.succeeded(cand, cred)
        call.status = 200
        await _reply(send, 200, payload)
        return "ok", _Result(final=True, status=200)

    async def _relay_stream(
        self,
        call: _Call,
        cand: Candidate,
        cred: Credential,
        wire: UpstreamWire,
        response: Response,
        watch: StreamWatch,
        meter: _Meter,
        send: Send,
    ) -> tuple[Outcome, _Result]:
        same = wire == call.protocol
        converter = None if same else _stream_converter(call, wire, cand.model)
        facts = watch.facts if same else StreamFacts(model=cand.model)
        reader = SSEReader()
        # The first valid event commits the attempt: from then on a failure is the
        # client's explicit error, before it the next candidate answers instead.
        # Deciding per event, not per read, keeps this independent of how TCP
        # happened to split the bytes.
        committed = False
        started = False
        deadline = meter.started + self._timeouts.first_byte
        failure: str | None = None
        kind: ErrorKind = "api"
        out: list[bytes] = []
        while True:
            wait = self._timeouts.idle if committed else max(0.001, deadline - time.perf_counter())
            try:
                chunk = await response.chunk(wait)
            except TimeoutError:
                failure = f"stream stalled: no data for {wait:g}s"
                kind = "overloaded"
                break
            except (UpstreamError, OSError) as exc:
                failure = f"stream cut: {_describe(exc)}"
                break
            if not chunk:
                if not watch.complete:
                    failure = "stream cut: the upstream closed it before its end"
                break
            out = []
            try:
                for event in reader.feed(chunk):
                    obj, relay = watch.see(event)
                    if meter.ttft is None:
                        meter.ttft = time.perf_counter() - meter.started
                    if watch.error is not None:
                        failure = f"upstream error in stream: {watch.error}"
                        kind = watch.error_kind
                        break
                    committed = True
                    if converter is not None:
                        if obj is not None:
                            out += _convert(converter, call.protocol, event.name, obj, facts)
                    elif relay:
                        out.append(event.raw)
                    if watch.done:
                        break
            except Malformed as exc:
                failure = str(exc)
            except translate.UpstreamStreamError as exc:
                failure = f"upstream error in stream: {exc}"
            if failure is None and (watch.done or (converter is not None and converter.ended)):
                # `out` goes with the end of the stream, in one write. A translated
                # stream ends when the client's last event is out, not at the upstream's
                # end marker: a client that hangs up on that event has its whole answer.
                break
            if committed:
                if not started:
                    started = True
                    call.status = 200
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS}
                    )
                if out:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
                    out = []
            if failure is not None:
                break
        if failure is None:
            tail = out
            if converter is not None:
                tail += _finish(converter, call.protocol, facts)
            if call.protocol == "chat" and (converter is not None or not watch.done):
                tail.append(_DONE)
            if not started:
                call.status = 200
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            meter.tokens = watch.tokens()
            self.router.succeeded(cand, cred)
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
            return "ok", _Result(final=True, status=200)
        if not committed:
            # Nothing reached the client yet: the next candidate can still answer whole.
            return "failed_over", self._failed(cand, cred, "stream", failure)
        self.router.failed(cand, cred, "stream", failure)
        call.error = failure
        await send(
            {
                "type": "http.response.body",
                "body": stream_error(call.protocol, kind, _client_message(failure), facts),
                "more_body": False,
            }
        )
        return "stream_error", _Result(final=True, status=200, error=failure)

    def _failed(
        self,
        cand: Candidate,
        cred: Credential,
        failure: Failure,
        error: str,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> _Result:
        self.router.failed(cand, cred, failure, error, retry_after)
        return _Result(
            final=False, failure=failure, error=error, retry_after=retry_after, status=status
        )

    def _record(
        self,
        call: _Call,
        cand: Candidate,
        cred: Credential,
        wire: UpstreamWire,
        outcome: Outcome,
        result: _Result,
        meter: _Meter,
        span: Span,
    ) -> None:
        tokens = meter.tokens or Tokens()
        cost = self.prices.cost(
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
            client_protocol=call.protocol,
            upstream_protocol=wire,
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
        self.metrics.attempt(attempt)
        if span is not INVALID_SPAN:
            end_attempt_span(span, attempt, meter.response_model)
        try:
            self.sink.record(attempt)
        except Exception:
            log.exception("the meter sink failed to record attempt %s", call.request_id)


# --- helpers -----------------------------------------------------------------------------

_BAD_KEY = (
    "missing or unknown gateway key: send the agent's overnight key as x-api-key "
    "or Authorization: Bearer"
)


_WANTED = frozenset(
    [
        b"x-api-key",
        b"authorization",
        b"x-overnight-trial",
        b"traceparent",
        b"tracestate",
        b"content-length",
        b"anthropic-version",
        b"anthropic-beta",
        b"openai-beta",
    ]
)


_GOVERNANCE = "/overnight/v1/"


class Governance(Protocol):
    """What the gateway asks the command center's governance
    (overnight.governance.governor.Governor); it may block, so it runs off the loop,
    except `llm`, which only decides (tens of microseconds) and queues its record."""

    def hook(self, agent: str, payload: dict[str, Any]) -> dict[str, Any]: ...
    def judge(self, agent: str, request: dict[str, Any]) -> dict[str, Any]: ...
    def approval(self, agent: str, approval_id: str) -> dict[str, Any] | None: ...
    def llm(self, agent: str, model: str, est_cost_usd: float, trial: int | None) -> Any: ...


class Desk(Protocol):
    """Where agents' own processes submit trials (overnight.lab.desk.TrialDesk); every
    call may block, so each runs off the loop. `submit` raises UserError (409) when the
    trial cannot start, saying why, and ValueError (400) on a bad request."""

    def submit(self, agent: str, request: dict[str, Any]) -> dict[str, Any]: ...
    def trial(self, agent: str, number: int, wait: float) -> dict[str, Any] | None: ...
    def stop(self, agent: str, number: int) -> bool: ...
    def notes(self, agent: str) -> dict[str, Any]: ...


def _problem(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers the gateway reads; the rest are neither decoded nor forwarded."""
    return {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}


def _presented_key(headers: dict[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def _read_body(receive: Receive, limit: int, declared: str | None) -> bytes | None:
    """The whole request body, or None when it is over `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc)  # says what failed in its own words
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _client_message(failure: str) -> str:
    return f"the answer failed part-way and is incomplete ({failure}); retry the request"


def _injects_usage(call: _Call) -> bool:
    """Whether a streamed Chat Completions request gets usage it did not ask for."""
    if call.protocol != "chat":
        return False
    options = call.body.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


@functools.lru_cache(maxsize=1024)
def _model_value(alias: str) -> re.Pattern[bytes]:
    """`"model": "<alias>"` as it may appear in a client's JSON body."""
    return re.compile(rb'"model"\s*:\s*' + re.escape(json.dumps(alias).encode()))


def _rewrite(call: _Call, model: str) -> bytes:
    """The client's own bytes for the upstream, with only what must change changed.

    The model name is replaced in place when it occurs once as a key's value;
    a chat stream that did not ask for usage gets `stream_options` so it can be
    metered. Anything less simple is re-serialized.
    """
    raw = call.raw
    inject = call.stream and _injects_usage(call)
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


def _reserialize(call: _Call, model: str, inject: bool) -> bytes:
    body = dict(call.body, model=model)
    if inject:
        options = body.get("stream_options")
        body["stream_options"] = (dict(options) if isinstance(options, dict) else {}) | {
            "include_usage": True
        }
    return dumps(body)


def _streamed_tokens(watch: StreamWatch, call: _Call) -> tuple[Tokens | None, bool]:
    """Usage of a stream that ended early: what it reported, topped up by an estimate."""
    reported = watch.tokens()
    if reported is None and watch.chars == 0:
        return None, False
    tokens = reported or Tokens()
    if tokens.total_input == 0:
        tokens.input = math.ceil(len(call.raw) / 4)
    tokens.output = max(tokens.output, math.ceil(watch.chars / 4))
    return tokens, True


def _translate_whole(
    call: _Call, wire: UpstreamWire, obj: dict[str, Any], model: str
) -> dict[str, Any]:
    if call.protocol == "anthropic":
        return translate.openai_to_anthropic_response(obj, model)
    if call.protocol == "chat":
        return translate.anthropic_to_openai_response(obj, model)
    # The client's tool declarations: a call of a namespaced or freeform tool goes back
    # to a Responses client in the shape it declared the tool in.
    tools = translate.responses_tools(call.body)
    if wire == "anthropic":
        return translate.anthropic_to_responses_response(obj, model, tools)
    return translate.chat_to_responses_response(obj, model, tools)


_Converter = (
    translate.OpenAIStreamToAnthropic
    | translate.AnthropicStreamToOpenAI
    | translate.ChatStreamToResponses
    | translate.AnthropicStreamToResponses
)


def _stream_converter(call: _Call, wire: UpstreamWire, model: str) -> _Converter:
    if call.protocol == "anthropic":
        return translate.OpenAIStreamToAnthropic(model)
    if call.protocol == "chat":
        options = call.body.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        return translate.AnthropicStreamToOpenAI(model, include)
    tools = translate.responses_tools(call.body)  # as in _translate_whole
    if wire == "anthropic":
        return translate.AnthropicStreamToResponses(model, tools)
    return translate.ChatStreamToResponses(model, tools)


def _encode(protocol: ClientProtocol, items: list[Any], facts: StreamFacts) -> list[bytes]:
    if protocol == "chat":
        return [b"data: %b\n\n" % dumps(chunk) for chunk in items]  # sse(), inlined
    out = []
    for name, data in items:
        if protocol == "responses":
            seq = data.get("sequence_number")
            if isinstance(seq, int):
                facts.sequence = seq
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                facts.response_id = response["id"]
        out.append(sse(data, name))
    return out


# The converters fed chunks of Chat Completions; the others are fed named events.
_CHUNK_FED = (translate.OpenAIStreamToAnthropic, translate.ChatStreamToResponses)


def _convert(
    converter: _Converter,
    protocol: ClientProtocol,
    name: str | None,
    obj: dict[str, Any],
    facts: StreamFacts,
) -> list[bytes]:
    items: list[Any]
    if isinstance(converter, _CHUNK_FED):
        items = converter.feed(obj)
    else:
        items = converter.feed(name or str(obj.get("type", "")), obj)
    return _encode(protocol, items, facts) if items else []


def _finish(converter: _Converter, protocol: ClientProtocol, facts: StreamFacts) -> list[bytes]:
    return _encode(protocol, list(converter.finish()), facts)
