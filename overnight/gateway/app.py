"""The gateway's ASGI app: every LLM call of every agent comes in here.

Owns the endpoints and what happens before and after a proxied call: dispatching
a path to its protocol (or to health, metrics, the model list, the agents'
`/overnight/v1` endpoints), virtual-key checks, reading and checking the request,
policy and budget checks, the call's metrics and span, and cancelling everything
(the upstream request too) when the client leaves. Serving the call from its
route is `failover.py`'s job, relaying the answer `relay.py`'s, and what differs
between protocols the protocol objects' (`protocols/`): nothing here branches on
a protocol. Knows nothing about the store, the org or the lab: they are injected.

Raw ASGI rather than a framework, and a small purpose-built client
(`upstream.py`) for the upstream side: on a 2-core box both were measured to
matter for the added-latency target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.trace import INVALID_SPAN, TracerProvider

from overnight.costs.prices import PriceTable
from overnight.gateway import agent_api, protocols
from overnight.gateway.agent_api import Desk, Governance
from overnight.gateway.asgi import (
    BAD_KEY,
    ClientGone,
    Receive,
    Scope,
    Send,
    presented_key,
    read_body,
    reply,
    request_headers,
    wanted_headers,
)
from overnight.gateway.call import Call, fail
from overnight.gateway.codec import loads
from overnight.gateway.config import Secret, read_secrets
from overnight.gateway.failover import Failover
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import BudgetExhausted, Budgets, MeterSink
from overnight.gateway.protocols import WireProtocol
from overnight.gateway.router import Events, Router
from overnight.gateway.telemetry import Metrics, end_request_span, request_span, tracer
from overnight.org.gateway import GatewayConfig

log = logging.getLogger("overnight.gateway")
# Request ids need to be unique, not secret: no system call (os.urandom) per request.
_random_bits = random.Random().getrandbits


def _noop_events(kind: str, payload: dict[str, Any]) -> None:
    return None


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
        self.budgets.on_threshold = lambda crossing: self._emit("budget", crossing)
        self._budgets_on = self.budgets.enabled
        self.prices = prices or PriceTable(config.prices)
        self._tracer = tracer(tracer_provider)
        self._traced = tracer_provider is not None
        self._traced_checked = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failover = Failover(
            config, self.router, self.prices, self.metrics, sink, self._tracer
        )
        every = protocols.protocols()
        self._endpoints: dict[str, WireProtocol] = {p.path: p for p in every}
        self._wanted = wanted_headers(h for p in every for h in p.client_headers)

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

    async def aclose(self) -> None:
        await self._failover.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._failover.http()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(agent_api.PREFIX):
            await agent_api.serve(
                path[len(agent_api.PREFIX) :],
                method,
                scope,
                request_headers(scope, self._wanted),
                receive,
                send,
                self.keys,
                self.governor,
                self.desk,
            )
            return
        protocol = self._endpoints.get(path)
        if protocol is not None:
            if method != "POST":
                await reply(send, 405, protocol.error_body("invalid", f"use POST {path}"))
                return
            await self._proxy(protocol, scope, receive, send)
            return
        if method == "GET" and path == "/health":
            health = self.router.health() | {"budgets": self.budgets.snapshot()}
            await reply(send, 200, json.dumps(health).encode())
        elif method == "GET" and path == "/metrics":
            await reply(
                send,
                200,
                self._render_metrics().encode(),
                content_type=b"text/plain; version=0.0.4; charset=utf-8",
            )
        elif method == "GET" and path == "/v1/models":
            headers = request_headers(scope, self._wanted)
            if self.keys.verify(presented_key(headers)) is None:
                guess = protocols.by_key_header(headers)
                await reply(send, 401, guess.error_body("auth", BAD_KEY))
                return
            await reply(send, 200, json.dumps(self._models()).encode())
        else:
            guess = protocols.by_path_prefix(path)
            await reply(send, 404, guess.error_body("not_found", f"no endpoint {method} {path}"))

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
        self, protocol: WireProtocol, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = request_headers(scope, self._wanted)
        agent = self.keys.verify(presented_key(headers))
        if agent is None:
            await reply(send, 401, protocol.error_body("auth", BAD_KEY))
            return
        limit = self.config.max_body
        try:
            raw = await read_body(receive, limit, headers.get("content-length"))
        except ClientGone:
            return
        if raw is None:
            message = f"request body is larger than the gateway's limit of {limit} bytes (max_body)"
            await reply(send, 413, protocol.error_body("too_large", message))
            return
        try:
            body = loads(raw)
        except ValueError as exc:
            message = f"request body is not valid JSON: {exc}"
            await reply(send, 400, protocol.error_body("invalid", message))
            return
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            message = 'request body must be a JSON object with a "model" string'
            await reply(send, 400, protocol.error_body("invalid", message))
            return
        alias: str = body["model"]
        route = self.router.route(alias)
        if route is None:
            known = ", ".join(sorted(self.router.routes)) or "none"
            message = f"model {alias!r} is not configured in [gateway.models]; known: {known}"
            await reply(send, 404, protocol.error_body("not_found", message))
            return
        stream = body.get("stream") is True
        trial = headers.get("x-overnight-trial") or None
        operation = "chat"  # gen_ai.operation.name: what every call is, whatever its protocol
        call = Call(
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
                await reply(send, 403, protocol.error_body("forbidden", message))
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
                    await fail(call, send, 402, "budget", str(exc))
                    return
            await self._guarded(call, scope, receive, send)
        finally:
            if call.reservation is not None:
                self.budgets.settle(call.reservation, call.cost)
            elapsed = time.perf_counter() - started
            status = call.status or 499
            self.metrics.inc(
                "overnight_gateway_requests_total",
                (("route", alias), ("protocol", protocol.name), ("status", str(status))),
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

    async def _guarded(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
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
            await self._failover.serve(call, send)
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

    def _estimate(self, call: Call) -> float:
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
