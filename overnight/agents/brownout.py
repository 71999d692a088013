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
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from overnight.records import Trial
from overnight.store import Store

PROBE_EVERY_S = 1.0
PAUSE_FILE = "paused"
"""In an external agent's private directory while it must not start a turn (its content
says why); the agent process waits while it exists."""


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
class Brownout:
    """One brownout of one agent, from its start to its recovery."""

    store: Store
    run_id: str
    agent: str
    route: str
    mode: str
    started: float = field(default_factory=time.time)
    trials: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store.append_event(
            self.run_id,
            "agent.brownout",
            {"route": self.route, "mode": self.mode, "started": self.started},
            agent=self.agent,
        )
        state = "paused" if self.mode == "pause" else "working"
        self.store.set_agent_state(
            self.run_id, self.agent, state, reason=f"route {self.route!r} in brownout",
            on_brownout=self.mode,
        )  # fmt: skip

    def done(self, trial: Trial) -> None:
        self.trials.append(trial.number)

    def end(self) -> None:
        ended = time.time()
        self.store.append_event(
            self.run_id,
            "agent.recovered",
            {
                "route": self.route,
                "mode": self.mode,
                "started": self.started,
                "ended": ended,
                "lasted_s": round(ended - self.started, 3),
                "trials": self.trials,
            },
            agent=self.agent,
        )
