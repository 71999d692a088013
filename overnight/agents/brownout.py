"""Brownout: what an agent does while every candidate of its model route is down.

The gateway knows when a route is in brownout (every candidate's breaker open or
its credentials rotated out). An agent on that route stops thinking: it is
*paused* with its state kept, or, with `on_brownout = "optimize"`, the lab goes
on with the offline optimizer in the agent's worktree. Recovery is found by a
probe: a one-token request through the gateway with the agent's key, which the
gateway answers at once with 503 while the breakers are open and lets through
as the breaker's probe once one half-opens. Each brownout is recorded as an
`agent.brownout` event when it starts and `agent.recovered` when it ends, with
the trials done during it.

Knows nothing about the CLI or the web page.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from overnight.records import Trial
from overnight.store import Store

PROBE_EVERY_S = 1.0


class RouteState(Protocol):
    @property
    def brownout(self) -> bool:
        """Every candidate of the route is down."""
        ...


class Router(Protocol):
    @property
    def routes(self) -> Mapping[str, RouteState]: ...


class GatewayRoutes(Protocol):
    """What an agent watches of the in-process gateway (`overnight.gateway.app.Gateway`):
    its router, whose routes say whether they are in brownout."""

    @property
    def router(self) -> Router: ...


@dataclass
class RouteWatch:
    """One agent's view of its model route at the in-process gateway."""

    gateway: GatewayRoutes
    url: str
    alias: str
    key_file: Path

    def down(self) -> bool:
        route = self.gateway.router.routes.get(self.alias)
        return bool(route is not None and route.brownout)

    def probe(self) -> bool:
        """True when a minimal request through the gateway is answered."""
        parts = urllib.parse.urlsplit(self.url)
        body = json.dumps(
            {
                "model": self.alias,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "ping"}],
            }
        )
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body,
                {
                    "content-type": "application/json",
                    "authorization": f"Bearer {self.key_file.read_text().strip()}",
                    "x-overnight-probe": "brownout",
                },
            )
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except OSError:
            return False
        finally:
            conn.close()


@dataclass
class RideOut:
    """One brownout of one agent's route, ridden out: iterate it, one round at a time.

    Starting, it records `agent.brownout` and the agent `paused` (or `working`, when
    it optimizes meanwhile); ending, however it ends, `agent.recovered` with the trials
    done during it. Each round runs one trial of `optimize` (which may decline: None)
    or else waits PROBE_EVERY_S, and yields that trial (None for a wait) before the
    route is probed. The rounds end once the probe is answered (`recovered`) or `stop`
    is set; a caller that stops earlier closes the iterator.
    """

    store: Store
    run_id: str
    agent: str
    watch: RouteWatch
    stop: threading.Event
    optimize: Callable[[], Trial | None] | None = None
    recovered: bool = field(default=False, init=False)
    """Whether the rounds ended because the route answers again."""

    def __iter__(self) -> Generator[Trial | None, None, None]:
        route, mode = self.watch.alias, "optimize" if self.optimize is not None else "pause"
        started = time.time()
        trials: list[int] = []
        self.store.append_event(
            self.run_id, "agent.brownout", {"route": route, "mode": mode, "started": started},
            agent=self.agent,
        )  # fmt: skip
        self.store.set_agent_state(
            self.run_id, self.agent, "paused" if mode == "pause" else "working",
            reason=f"route {route!r} in brownout", on_brownout=mode,
        )  # fmt: skip
        try:
            while not self.stop.is_set():
                trial = self.optimize() if self.optimize is not None else None
                if trial is not None:
                    trials.append(trial.number)
                yield trial
                if trial is None and self.stop.wait(PROBE_EVERY_S):
                    return
                if self.watch.probe():
                    self.recovered = True
                    return
        finally:
            ended = time.time()
            self.store.append_event(
                self.run_id,
                "agent.recovered",
                {
                    "route": route, "mode": mode, "started": started, "ended": ended,
                    "lasted_s": round(ended - started, 3), "trials": trials,
                },
                agent=self.agent,
            )  # fmt: skip
