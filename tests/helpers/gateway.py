"""Helpers for the gateway tests: a gateway in a thread in front of fake providers.

No tests here. Everything is real: the gateway listens on loopback, the
upstreams are `overnight.testing.FakeProvider` servers, the clients are the
official SDKs. Time for breakers comes from a `Clock` the test advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import anthropic
import openai
import uvicorn

from overnight.gateway.app import Gateway
from overnight.gateway.config import Secret
from overnight.gateway.keys import KeyRing
from overnight.gateway.meter import Attempt, Budgets, MemorySink
from overnight.gateway.server import RunningGateway, running_gateway
from overnight.org.gateway import GatewayConfig
from overnight.sessions import wait_until


class Clock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WaitingSink(MemorySink):
    """A MemorySink a test can wait on (a condition variable, not a sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def record(self, attempt: Attempt) -> None:
        with self._cond:
            super().record(attempt)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Attempt]], bool], timeout: float = 10) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.attempts), timeout)
        assert ok, f"timed out waiting; attempts: {self.attempts}"


@dataclass
class Env:
    """A running gateway and what a test needs around it."""

    url: RunningGateway
    key: str
    sink: WaitingSink
    events: list[tuple[str, dict[str, Any]]]
    clock: Clock
    keys: KeyRing
    config: GatewayConfig
    extra: dict[str, Any] = field(default_factory=dict)
    clients: list[anthropic.Anthropic | openai.OpenAI] = field(default_factory=list)

    def anthropic(self, **kw: Any) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            base_url=self.url, api_key=kw.pop("api_key", self.key), max_retries=0, timeout=20, **kw
        )
        self.clients.append(client)
        return client

    def openai(self, **kw: Any) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=kw.pop("api_key", self.key),
            max_retries=0,
            timeout=20,
            **kw,
        )
        self.clients.append(client)
        return client

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def outcomes(self) -> list[tuple[str, str]]:
        return [(a.upstream, a.outcome) for a in self.sink.attempts]

    def health(self) -> dict[str, Any]:
        return json.loads(get(self.url + "/health")[1])


def upstream(name: str, protocol: str, url: str, *creds: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": protocol,
        "base_url": url,
        "credentials": [{"name": c, "env": f"KEY_{name}_{c}".upper()} for c in creds],
        **kw,
    }


@contextlib.contextmanager
def gateway(
    upstreams: list[dict[str, Any]],
    models: dict[str, list[str]],
    *,
    secrets: dict[tuple[str, str], str] | None = None,
    ledger: Budgets | None = None,
    tracer_provider: Any = None,
    asgi_server: str = "overnight",
    **settings: Any,
) -> Iterator[Env]:
    """A gateway on loopback; every credential's secret is `sk-<upstream>-<name>` unless given.

    `asgi_server="uvicorn"` serves the same app with uvicorn instead of the gateway's own
    server: the app is plain ASGI, and must behave the same under any server.
    """
    config = GatewayConfig.model_validate({"upstreams": upstreams, "models": models, **settings})
    given = secrets or {}
    resolved = {
        (u.name, c.name): Secret(given.get((u.name, c.name), f"sk-{u.name}-{c.name}"))
        for u in config.upstreams
        for c in u.credentials
    }
    keys = KeyRing()
    key = keys.issue("alice")
    sink = WaitingSink()
    events: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    serve = running_gateway if asgi_server == "overnight" else _under_uvicorn
    with serve(
        config,
        keys,
        sink,
        lambda kind, payload: events.append((kind, payload)),
        secrets=resolved,
        budgets=ledger,
        clock=clock,
        tracer_provider=tracer_provider,
    ) as url:
        env = Env(url, key, sink, events, clock, keys, config)
        try:
            yield env
        finally:
            for client in env.clients:
                client.close()


@contextlib.contextmanager
def _under_uvicorn(
    config: GatewayConfig, keys: KeyRing, sink: Any, events: Any, **options: Any
) -> Iterator[RunningGateway]:
    app = Gateway(config, keys, sink, events, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http="httptools")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30)
        assert server.started, "uvicorn did not start"
        yield RunningGateway(f"http://127.0.0.1:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(
    url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A raw POST (for what an SDK will not send); (status, JSON body, headers)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


HELLO = [{"role": "user", "content": "hello"}]


class LoopbackServer:
    """A TCP server on 127.0.0.1 with its own event loop in its own thread; a subclass
    says how it serves a connection (`_serve`). `with` starts and stops it."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
