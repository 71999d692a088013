"""Relaying an upstream's answer to the client, whole or streamed.

Owns what happens once an upstream answered 200: reading the answer (bounded by
the idle timeout), passing it on as bytes unchanged when client and upstream
speak the same protocol, or through the protocols' converters (by way of Chat
Completions) when they do not; for a stream, when the attempt commits (its first
valid event: before it the next candidate may still answer, after it a failure
is the client's explicit error event, never a truncated success), and what the
stream used when it died before saying. Tells the router whether the attempt
succeeded. Knows nothing about choosing candidates or credentials, nor about
endpoints, keys or budgets.
"""

from __future__ import annotations

import math
import time
from typing import Any

from overnight.gateway.asgi import Send, reply
from overnight.gateway.call import Call, Meter, Result, failed
from overnight.gateway.codec import SSEReader, dumps, loads
from overnight.gateway.meter import Outcome
from overnight.gateway.protocols import (
    ErrorKind,
    Malformed,
    StreamFacts,
    StreamWatch,
    Tokens,
    WireProtocol,
)
from overnight.gateway.protocols.base import FromChat, Json, ToChat
from overnight.gateway.router import Candidate, Credential, Router
from overnight.gateway.translate import UpstreamStreamError
from overnight.gateway.upstream import Response, UpstreamError, describe
from overnight.org.gateway import TimeoutsConfig

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Relay:
    """Relays one attempt's answer; shared by every request, state on the call."""

    def __init__(self, router: Router, timeouts: TimeoutsConfig) -> None:
        self._router = router
        self._timeouts = timeouts

    async def whole(
        self,
        call: Call,
        cand: Candidate,
        cred: Credential,
        wire: WireProtocol,
        response: Response,
        meter: Meter,
        send: Send,
    ) -> tuple[Outcome, Result]:
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
            return "failed_over", failed(
                self._router, cand, cred, "stream", f"answer stalled: no data for {idle:g}s"
            )
        except (UpstreamError, OSError) as exc:
            return "failed_over", failed(
                self._router, cand, cred, "stream", f"answer cut: {describe(exc)}"
            )
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            obj = loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            return "failed_over", failed(
                self._router, cand, cred, "stream", f"answer is not valid JSON: {data[:80]!r}"
            )
        meter.tokens = wire.tokens_of_body(obj)
        meter.response_model = obj.get("model") if isinstance(obj.get("model"), str) else None
        client = call.protocol
        if wire is client:
            payload = data
        else:
            model = cand.model
            chat = wire.answer_to_chat(obj, model)
            payload = dumps(client.answer_from_chat(chat, model, call.body))
        self._router.succeeded(cand, cred)
        call.status = 200
        await reply(send, 200, payload)
        return "ok", Result(final=True, status=200)

    async def stream(
        self,
        call: Call,
        cand: Candidate,
        cred: Credential,
        wire: WireProtocol,
        response: Response,
        watch: StreamWatch,
        meter: Meter,
        send: Send,
    ) -> tuple[Outcome, Result]:
        client = call.protocol
        same = wire is client
        facts = watch.facts if same else StreamFacts(model=cand.model)
        translation = None if same else _Translation(call, wire, cand.model, facts)
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
                failure = f"stream cut: {describe(exc)}"
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
                    if translation is not None:
                        if obj is not None:
                            out += translation.feed(event.name, obj)
                    elif relay:
                        out.append(event.raw)
                    if watch.done:
                        break
            except Malformed as exc:
                failure = str(exc)
            except UpstreamStreamError as exc:
                failure = f"upstream error in stream: {exc}"
            if failure is None and (
                watch.done or (translation is not None and translation.ended())
            ):
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
            if translation is not None:
                tail += translation.finish()
            end = client.stream_end
            if end is not None and (translation is not None or not watch.done):
                tail.append(end)  # the client's end marker, unless the upstream's was relayed
            if not started:
                call.status = 200
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            meter.tokens = watch.tokens()
            self._router.succeeded(cand, cred)
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
            return "ok", Result(final=True, status=200)
        if not committed:
            # Nothing reached the client yet: the next candidate can still answer whole.
            return "failed_over", failed(self._router, cand, cred, "stream", failure)
        self._router.failed(cand, cred, "stream", failure)
        call.error = failure
        await send(
            {
                "type": "http.response.body",
                "body": client.stream_error(kind, _client_message(failure), facts),
                "more_body": False,
            }
        )
        return "stream_error", Result(final=True, status=200, error=failure)


class _Translation:
    """An upstream's stream as its client's: the upstream's events to Chat Completions
    chunks (none to do when the upstream speaks Chat), those to the client's events
    (none when the client does), encoded as server-sent events."""

    __slots__ = ("_encode", "_facts", "_from_chat", "_last", "_to_chat")

    def __init__(self, call: Call, wire: WireProtocol, model: str, facts: StreamFacts) -> None:
        client = call.protocol
        self._to_chat: ToChat | None = wire.stream_to_chat(
            model, client.wants_usage_chunk(call.body)
        )
        self._from_chat: FromChat | None = client.stream_from_chat(model, call.body)
        last = self._from_chat or self._to_chat
        assert last is not None, "a stream between two protocols with nothing to translate"
        self._last: ToChat | FromChat = last
        self._encode = client.encode_events
        self._facts = facts

    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return self._last.ended

    def feed(self, name: str | None, obj: Json) -> list[bytes]:
        to_chat, from_chat = self._to_chat, self._from_chat
        chunks = [obj] if to_chat is None else to_chat.feed(name or "", obj)
        items: list[Any] = (
            chunks if from_chat is None else [e for c in chunks for e in from_chat.feed(c)]
        )
        return self._encode(items, self._facts) if items else []

    def finish(self) -> list[bytes]:
        """The client's last events, once the upstream's stream has ended."""
        to_chat, from_chat = self._to_chat, self._from_chat
        chunks = [] if to_chat is None else to_chat.finish()
        items: list[Any]
        if from_chat is None:
            items = chunks
        else:
            items = [e for c in chunks for e in from_chat.feed(c)] + from_chat.finish()
        return self._encode(items, self._facts)


def streamed_tokens(watch: StreamWatch, call: Call) -> tuple[Tokens | None, bool]:
    """Usage of a stream that ended early: what it reported, topped up by an estimate."""
    reported = watch.tokens()
    if reported is None and watch.chars == 0:
        return None, False
    tokens = reported or Tokens()
    if tokens.total_input == 0:
        tokens.input = math.ceil(len(call.raw) / 4)
    tokens.output = max(tokens.output, math.ceil(watch.chars / 4))
    return tokens, True


def _client_message(failure: str) -> str:
    return f"the answer failed part-way and is incomplete ({failure}); retry the request"
