"""The fake LLM provider: a real HTTP server on loopback that answers like Anthropic or
OpenAI from scripted replies, and misbehaves on demand.

Owns which reply a request gets (a FIFO queue, or chosen from the conversation),
the fault queue (status codes, delays, resets, stalls, cuts, malformed chunks,
in-stream errors, an expired credential), the record of received requests, the
admin endpoints that drive all of that from another process, and `serve()` for
the `overnight fake-provider` command. Knows nothing about the gateway or any
other client: wire formats live in `wire.py` (named by the gateway's protocol
objects, rendered by the fake itself), sockets in `server.py`.

    with FakeProvider(protocol="anthropic") as fp:
        fp.enqueue(Reply(tool_calls=[ToolCall(name="Bash", arguments={"command": "ls"})]))
        fp.fault("status", code=529, times=2)
        client = anthropic.Anthropic(base_url=fp.url, api_key="x")

Faults are taken in FIFO order, one per model request, before any reply; a
fault with `times=None` stays at the head of the queue until cleared, so
nothing behind it fires. Faults and replies apply to the model endpoints only
(`/v1/messages`, `/v1/chat/completions`, `/v1/responses`), never to
`/v1/models` or `/_admin/*`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType, FrameType, TracebackType
from typing import Any, Literal, Self, get_args

import orjson

from overnight.errors import UserError
from overnight.testing.replies import (
    DEFAULT_REPLY,
    Reply,
    load_script,
    reply_for_conversation,
    reply_from_json,
    reply_to_json,
)
from overnight.testing.server import Request, Responder, Server
from overnight.testing.wire import VENDORS, Dialect, Vendor, dumps, make_turn, new_id

ProtocolName = Literal["anthropic", "openai"]
Mode = Literal["queue", "conversation"]
FaultKind = Literal[
    "status", "delay", "reset", "stall", "cut", "malformed", "stream_error", "expired_key"
]

MAX_RECORDED_REQUESTS = 1000
"""Only the latest requests are kept, so a fake left running all night stays small."""

_PARAMS: dict[str, dict[str, type]] = {
    "status": {"code": int, "retry_after": float, "message": str},
    "delay": {"seconds": float},
    "reset": {},
    "stall": {"after_chunks": int, "seconds": float},
    "cut": {"after_chunks": int},
    "malformed": {"after_chunks": int},
    "stream_error": {"after_chunks": int},
    "expired_key": {},
}
_REQUIRED = {"status": ("code",), "delay": ("seconds",)}
_MID_ANSWER = {"stall", "cut", "malformed", "stream_error"}


@dataclass
class Fault:
    """One injected failure. `times`: requests left to hit; `None` = until cleared.

    - `status`: HTTP `code` with the provider's error body (`retry_after` adds
      Retry-After and retry-after-ms headers; `message` replaces the text).
    - `delay`: wait `seconds` before the status line, then answer normally.
    - `reset`: a TCP reset instead of any response.
    - `stall`: send `after_chunks` events, go silent for `seconds`, then finish.
      A negative `after_chunks` counts from the end: -1 stalls before the last
      event (OpenAI's `data: [DONE]`, Anthropic's `message_stop`).
    - `cut`: send `after_chunks` events, then close without ending the body.
    - `malformed`: after `after_chunks` events, one event whose data is not JSON,
      then the rest of the stream as if nothing happened.
    - `stream_error`: after `after_chunks` events, the provider's own in-stream
      error (Anthropic `event: error` overloaded, OpenAI an `error` chunk or
      `response.failed`), then the end of the stream.
    - `expired_key`: 401 with the provider's expired-credential body.

    On a non-streaming request, the mid-answer faults act on the JSON body:
    stall and cut after half of it, malformed sends a body that is not JSON,
    stream_error answers 500.
    """

    kind: FaultKind
    times: int | None = 1
    code: int = 500
    retry_after: float | None = None
    message: str | None = None
    seconds: float = 3600.0
    after_chunks: int = 1

    @classmethod
    def create(
        cls, kind: str, times: int | EllipsisType | None, params: Mapping[str, Any]
    ) -> Fault:
        """A validated fault; `ValueError` says what is wrong and what is allowed."""
        if kind not in _PARAMS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(_PARAMS)}")
        allowed = _PARAMS[kind]
        given = {k: v for k, v in params.items() if v is not None}
        unknown = set(given) - set(allowed)
        if unknown:
            names = ", ".join(allowed) or "none"
            raise ValueError(f"fault {kind!r} takes no {sorted(unknown)}; its parameters: {names}")
        for name in _REQUIRED.get(kind, ()):
            if name not in given:
                raise ValueError(f"fault {kind!r} needs {name}=")
        for name, value in given.items():
            want = allowed[name]
            ok = isinstance(value, want) or (want is float and isinstance(value, int))
            signed = name == "after_chunks"  # negative counts from the end
            if not ok or isinstance(value, bool) or (want is not str and value < 0 and not signed):
                bound = "" if want is str or signed else " >= 0"
                raise ValueError(
                    f"fault {kind!r}: {name} must be a {want.__name__}{bound}, got {value!r}"
                )
        if kind == "status" and not 400 <= given["code"] <= 599:
            raise ValueError(
                f"fault 'status': code must be an HTTP error (400-599), got {given['code']}"
            )
        if times is ...:
            times = None if kind == "expired_key" else 1
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ValueError(
                f"times must be a positive integer or None (until cleared), got {times!r}"
            )
        return cls(kind=kind, times=times, **given)  # type: ignore[arg-type]


@dataclass
class _State:
    """Everything the test thread and the server thread share; guarded by `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: deque[Fault] = field(default_factory=deque)
    replies: deque[Reply] = field(default_factory=deque)
    script: list[Reply] = field(default_factory=list)
    requests: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS)
    )


class FakeProvider:
    """A fake Anthropic or OpenAI endpoint on 127.0.0.1, for tests, benchmarks and rehearsals.

    `protocol="anthropic"` serves `POST /v1/messages`; `"openai"` serves
    `POST /v1/chat/completions` and `POST /v1/responses`; both serve
    `GET /v1/models`. `api_keys=None` accepts any key; otherwise another key
    gets the provider's 401.

    `mode="queue"`: each model request takes the next reply (`script` first,
    then whatever `enqueue` adds), or "ok" when none is left.
    `mode="conversation"`: the reply is `script[i]`, where `i` is found from the
    tool results already in the request (see `reply_for_conversation`), so a
    client that retries or sends side requests still gets the right turn;
    `enqueue` appends to the script.

    `tls`: a server-side `ssl.SSLContext` (holding a certificate, e.g. one made with
    `trustme`) serves HTTPS instead of HTTP; `host` is the address to listen on.
    """

    def __init__(
        self,
        protocol: ProtocolName = "anthropic",
        *,
        api_keys: Iterable[str] | None = None,
        script: Sequence[Reply] = (),
        mode: Mode = "queue",
        models: Sequence[str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if protocol not in VENDORS:
            raise ValueError(f"protocol must be one of {sorted(VENDORS)}, got {protocol!r}")
        if mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}, got {mode!r}")
        self.protocol = protocol
        self.mode = mode
        self._vendor: Vendor = VENDORS[protocol]
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._models = list(models) if models is not None else [self._vendor.default_model]
        self._state = _State()
        if mode == "queue":
            self._state.replies.extend(script)
        else:
            self._state.script.extend(script)
        self._host = host
        self._tls = tls
        self._server = Server(self._handle, host=host, port=port, tls=tls)
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        self._server.stop()
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("the fake provider is not started: use `with FakeProvider() as fp:`")
        return self._server.port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (`https://` with `tls`), without `/v1` (OpenAI clients
        want `url + "/v1"`)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    # --- scripting ---------------------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        with self._state.lock:
            if self.mode == "queue":
                self._state.replies.extend(replies)
            else:
                self._state.script.extend(replies)

    def fault(
        self,
        kind: FaultKind,
        *,
        times: int | EllipsisType | None = ...,
        code: int | None = None,
        retry_after: float | None = None,
        message: str | None = None,
        seconds: float | None = None,
        after_chunks: int | None = None,
    ) -> None:
        """Queue a fault (see `Fault`). `times` defaults to 1, or to `None` (until
        `clear_faults()`) for `expired_key`, since a dead credential stays dead."""
        params = {
            "code": code,
            "retry_after": retry_after,
            "message": message,
            "seconds": seconds,
            "after_chunks": after_chunks,
        }
        made = Fault.create(kind, times, params)
        with self._state.lock:
            self._state.faults.append(made)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Requests received so far (oldest first), as dicts with method, path,
        query, headers (lower-cased names) and body (parsed JSON when it is JSON)."""
        with self._state.lock:
            return list(self._state.requests)

    # --- serving -----------------------------------------------------------------------

    def _take_fault(self) -> Fault | None:
        with self._state.lock:
            faults = self._state.faults
            if not faults:
                return None
            head = faults[0]
            if head.times is not None:
                head.times -= 1
                if head.times <= 0:
                    faults.popleft()
            return head

    def _next_reply(self, dialect: Dialect, body: Mapping[str, Any], consume: bool) -> Reply:
        with self._state.lock:
            if self.mode == "conversation":
                return reply_for_conversation(self._state.script, dialect.tool_results(body))
            replies = self._state.replies
            if not replies:
                return DEFAULT_REPLY
            # An answer that will not arrive whole stays queued, so a retry gets it.
            return replies.popleft() if consume else replies[0]

    async def _handle(self, request: Request, r: Responder) -> None:
        if request.path.startswith("/_admin/"):
            await self._admin(request, r)
            return
        body = _parse_body(request.body)
        with self._state.lock:
            self._state.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "headers": request.headers,
                    "body": body,
                    "at": time.time(),
                }
            )
        vendor = self._vendor
        if self._api_keys is not None:
            key = vendor.api_key(request.headers)
            if key not in self._api_keys:
                await self._error(r, 401, vendor.wrong_key_error(key))
                return
        if request.path == "/v1/models":
            if request.method != "GET":
                await self._error(r, 405, vendor.error(405))
                return
            await self._json(r, 200, vendor.models(self._models))
            return
        dialect = vendor.dialect_for(request.path)
        if dialect is None:
            message = (
                f"{request.method} {request.path} is not served by a fake {vendor.name} provider"
            )
            await self._error(r, 404, vendor.error(404, message))
            return
        if request.method != "POST":
            await self._error(r, 405, vendor.error(405))
            return
        if not isinstance(body, dict):
            await self._error(r, 400, vendor.error(400, "the request body must be a JSON object"))
            return
        await self._answer(request, body, dialect, r)

    async def _answer(
        self, request: Request, body: dict[str, Any], dialect: Dialect, r: Responder
    ) -> None:
        vendor = self._vendor
        fault = self._take_fault()
        kind = fault.kind if fault else None
        if fault is not None:
            if fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    headers["retry-after"] = f"{fault.retry_after:g}"
                    headers["retry-after-ms"] = str(round(fault.retry_after * 1000))
                await self._error(r, fault.code, vendor.error(fault.code, fault.message), headers)
                return
            if fault.kind == "expired_key":
                await self._error(r, 401, vendor.expired_key_error())
                return
            if fault.kind == "reset":
                r.reset()
                return
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
        reply = self._next_reply(dialect, body, consume=kind not in _MID_ANSWER)
        turn = make_turn(reply, dialect, body)
        headers = {vendor.request_id_header: new_id("req_")}
        if body.get("stream") is not True:
            payload = dumps(dialect.message(turn, body))
            headers["content-type"] = "application/json"
            if fault is None or fault.kind == "delay":
                await r.send(200, headers, payload)
            elif fault.kind == "malformed":
                await r.send(200, headers, payload[: len(payload) // 2] + b"<not json>")
            elif fault.kind == "stream_error":
                await self._error(r, 500, vendor.error(500))
            else:  # stall or cut, half-way through the body
                half = len(payload) // 2
                await r.start(200, headers, len(payload))
                await r.write(payload[:half])
                if fault.kind == "cut":
                    await r.cut()
                    return
                await asyncio.sleep(fault.seconds)
                await r.write(payload[half:])
                await r.finish()
            return
        events = dialect.events(turn, body)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        await r.start(200, headers, None)
        where = None
        if fault is not None:
            where = (
                fault.after_chunks if fault.after_chunks >= 0 else len(events) + fault.after_chunks
            )
        for index in range(len(events) + 1):
            if fault is not None and index == where:
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
                elif fault.kind == "cut":
                    await r.cut()
                    return
                elif fault.kind == "malformed":
                    await r.write(dialect.garbage_event())
                elif fault.kind == "stream_error":
                    await r.write(dialect.error_event(turn, index))
                    await r.finish()
                    return
            if index < len(events):
                await r.write(events[index])
        await r.finish()

    async def _json(
        self, r: Responder, status: int, data: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        await r.send(status, {"content-type": "application/json", **(headers or {})}, dumps(data))

    async def _error(
        self, r: Responder, status: int, data: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        extra = {self._vendor.request_id_header: new_id("req_"), **(headers or {})}
        await self._json(r, status, data, extra)

    # --- admin -------------------------------------------------------------------------

    async def _admin(self, request: Request, r: Responder) -> None:
        """Drive the fake from another process; JSON in, JSON out, no key needed."""
        route = (request.method, request.path)
        body = _parse_body(request.body)
        try:
            if route == ("POST", "/_admin/fault"):
                if not isinstance(body, dict):
                    raise ValueError('send a JSON object like {"kind": "status", "code": 529}')
                params = dict(body)
                kind = params.pop("kind", None)
                times = params.pop("times") if "times" in params else ...
                made = Fault.create(str(kind), times, params)
                with self._state.lock:
                    self._state.faults.append(made)
                await self._json(r, 200, {"ok": True, "faults": self._fault_count()})
            elif route == ("POST", "/_admin/enqueue"):
                items = body if isinstance(body, list) else [body]
                replies = [reply_from_json(item, f"reply {i}") for i, item in enumerate(items)]
                self.enqueue(*replies)
                await self._json(r, 200, {"ok": True, "enqueued": len(replies)})
            elif route == ("POST", "/_admin/clear"):
                self.clear_faults()
                await self._json(r, 200, {"ok": True})
            elif route == ("GET", "/_admin/requests"):
                await self._json(r, 200, self.requests)
            elif route == ("GET", "/_admin/state"):
                with self._state.lock:
                    state = {
                        "protocol": self.protocol,
                        "mode": self.mode,
                        "faults": [_fault_json(f) for f in self._state.faults],
                        "replies": [reply_to_json(x) for x in self._state.replies],
                        "script": [reply_to_json(x) for x in self._state.script],
                    }
                await self._json(r, 200, state)
            else:
                await self._json(
                    r, 404, {"error": f"no admin endpoint {request.method} {request.path}"}
                )
        except ValueError as exc:
            await self._json(r, 400, {"error": str(exc)})

    def _fault_count(self) -> int:
        with self._state.lock:
            return len(self._state.faults)


def _fault_json(fault: Fault) -> dict[str, Any]:
    return {k: v for k, v in vars(fault).items() if v is not None}


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)  # what orjson refuses: NaN, another encoding, big integers
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


# --- the command -----------------------------------------------------------------------


def _server_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The https context for `--tls-cert` and `--tls-key`, or None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise UserError(
            f"{given} needs {missing}: serving https takes a certificate and its private key "
            "(both PEM files)"
        )
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise UserError(f"{flag}: no such file: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"cannot use {cert} with {key} as the fake provider's certificate ({reason}); "
            "give a PEM certificate and the PEM private key that belongs to it"
        ) from None
    return context


def serve(
    protocol: str,
    port: int,
    script: Path | None,
    mode: str,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Run a fake provider in the foreground until Ctrl-C (or SIGTERM).

    Prints the URL first, on a line of its own, then how to point a client at it
    and how to inject faults. With `tls_cert` and `tls_key` (PEM) it serves https.
    Bad input raises `UserError`.
    """
    if protocol not in VENDORS:
        raise UserError(f"--protocol must be anthropic or openai, not {protocol!r}")
    if mode not in get_args(Mode):
        raise UserError(f"--mode must be queue or conversation, not {mode!r}")
    tls = _server_tls(tls_cert, tls_key)
    replies = load_script(script) if script is not None else []
    fp = FakeProvider(protocol, script=replies, mode=mode, port=port, tls=tls)  # type: ignore[arg-type]
    try:
        fp.start()
    except OSError as exc:
        raise UserError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another --port, or 0 for any"
        ) from None
    url = fp.url
    client = VENDORS[protocol].client_env(url)
    trust = (
        f"  tls:     clients must trust the CA that signed {tls_cert} (SSL_CERT_FILE, or an\n"
        f"           upstream's ca_file in [gateway.upstreams]); curl: --cacert CA_FILE\n"
        if tls is not None
        else ""
    )
    print(url, flush=True)
    print(
        f"fake {protocol} provider, {mode} mode, {len(replies)} scripted replies\n"
        f"  clients: {client}\n{trust}"
        f'  faults:  curl -d \'{{"kind": "status", "code": 529, "times": 3}}\' {url}/_admin/fault\n'
        f"  recover: curl -X POST {url}/_admin/clear\n"
        f"Ctrl-C stops it.",
        flush=True,
    )

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # stop on `kill` as on Ctrl-C

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        threading.Event().wait()  # an untimed wait is interrupted by a signal at once
    except KeyboardInterrupt:
        pass
    finally:
        fp.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
