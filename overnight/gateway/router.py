"""Routes: which upstream/model candidates may serve a model alias, and how healthy they are.

Owns the runtime state behind failover: credentials rotating within an
upstream (skipped while a Retry-After runs, rotated out after a 401/403, with
a circuit breaker each), per-candidate health (state, error rate, last error)
and the brownout of a route whose every candidate is down, announced through
the injected `events` callback (and its recovery). Knows nothing about HTTP
or wire formats: the app tells it how each attempt went.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from overnight.gateway.breaker import Breaker, BreakerState
from overnight.gateway.config import Secret
from overnight.gateway.protocols import for_upstream
from overnight.org.gateway import CredentialConfig, GatewayConfig, UpstreamConfig

Events = Callable[[str, dict[str, Any]], None]

Failure = Literal[
    "connect", "timeout", "server", "overloaded", "rate_limited", "auth", "stream", "no_model"
]
"""Why an attempt failed before or during its answer, as far as routing cares."""

_WINDOW = 50  # attempts kept per candidate for its error rate
_REREAD_EVERY = 5.0  # seconds between checks of a rotated-out file credential


class Credential:
    """One credential of one upstream, with its breaker. The secret never leaves `auth_headers`."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        config: CredentialConfig | None,
        secret: Secret | None,
        breaker: Breaker,
    ) -> None:
        self.upstream = upstream.name
        self.name = config.name if config else "-"
        self._config = config
        self._secret = secret
        self.breaker = breaker
        self.cooling_until = 0.0
        self.rotated_out = False
        self.last_error: str | None = None
        self._file_mtime = self._mtime()
        self._checked_at = 0.0
        auth = (config.auth if config else None) or for_upstream(upstream)[0].upstream_auth
        self._auth_headers: dict[str, str] = {}
        if secret is not None:
            self._set_secret(secret, auth)
        self._auth = auth

    def _set_secret(self, secret: Secret, auth: str) -> None:
        self._secret = secret
        value = secret.reveal()
        self._auth_headers = (
            {"x-api-key": value} if auth == "x-api-key" else {"authorization": f"Bearer {value}"}
        )

    def _mtime(self) -> float | None:
        if self._config is None or self._config.file is None:
            return None
        try:
            return os.stat(os.path.expanduser(self._config.file)).st_mtime
        except OSError:
            return None

    @property
    def auth_headers(self) -> dict[str, str]:
        return self._auth_headers

    def usable(self, now: float) -> bool:
        if self.rotated_out:
            self._maybe_rotate_back_in(now)
        return not self.rotated_out and now >= self.cooling_until and self.breaker.available()

    def _maybe_rotate_back_in(self, now: float) -> None:
        """A rotated-out credential read from a file comes back when the file is rewritten."""
        if (
            self._config is None
            or self._config.file is None
            or now - self._checked_at < _REREAD_EVERY
        ):
            return
        self._checked_at = now
        mtime = self._mtime()
        if mtime is None or mtime == self._file_mtime:
            return
        try:
            with open(os.path.expanduser(self._config.file), encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError:
            return
        if value:
            self._file_mtime = mtime
            self._set_secret(Secret(value), self._auth)
            self.rotated_out = False
            self.breaker.success()


@dataclass
class Candidate:
    """One `upstream/model` of a route; its health is its own, its credentials its upstream's."""

    upstream: UpstreamConfig
    model: str
    credentials: list[Credential]
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    last_error: str | None = None
    last_error_at: float | None = None
    _next: int = 0

    @property
    def key(self) -> str:
        return f"{self.upstream.name}/{self.model}"

    @property
    def up(self) -> bool:
        """Some credential is in service with a closed breaker."""
        return any(
            not c.rotated_out and c.breaker.state is BreakerState.closed for c in self.credentials
        )

    def state(self) -> BreakerState:
        states = {c.breaker.state for c in self.credentials if not c.rotated_out}
        if BreakerState.closed in states:
            return BreakerState.closed
        if BreakerState.half_open in states:
            return BreakerState.half_open
        return BreakerState.open

    def pick(self, now: float, tried: set[Credential]) -> Credential | None:
        """The next usable credential in rotation that this request has not tried yet."""
        n = len(self.credentials)
        for i in range(n):
            cred = self.credentials[(self._next + i) % n]
            if cred not in tried and cred.usable(now) and cred.breaker.acquire():
                self._next = (self._next + i + 1) % n
                return cred
        return None

    def error_rate(self) -> float:
        return (self.outcomes.count(False) / len(self.outcomes)) if self.outcomes else 0.0


@dataclass
class Route:
    alias: str
    candidates: list[Candidate]
    brownout: bool = False
    brownout_since: float | None = None


class Router:
    """All routes of a gateway. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        config: GatewayConfig,
        secrets: Mapping[tuple[str, str], Secret],
        events: Events,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._events = events
        self._credentials: dict[str, list[Credential]] = {}
        for upstream in config.upstreams:
            creds: list[Credential] = []
            configs: list[CredentialConfig | None] = list(upstream.credentials) or [None]
            for cc in configs:
                secret = secrets.get((upstream.name, cc.name)) if cc else None
                creds.append(Credential(upstream, cc, secret, self._breaker(config, upstream, cc)))
            self._credentials[upstream.name] = creds
        self.routes: dict[str, Route] = {}
        for alias, keys in config.models.items():
            candidates = []
            for key in keys:
                name, _, model = key.partition("/")
                candidates.append(Candidate(config.upstream(name), model, self._credentials[name]))
            self.routes[alias] = Route(alias, candidates)

    def _breaker(
        self, config: GatewayConfig, upstream: UpstreamConfig, cc: CredentialConfig | None
    ) -> Breaker:
        cred_name = cc.name if cc else "-"

        def changed(old: BreakerState, new: BreakerState) -> None:
            self._events(
                "breaker",
                {"upstream": upstream.name, "credential": cred_name, "from": old, "to": new},
            )
            self._refresh_brownouts()

        b = config.breaker
        return Breaker(b.failures, b.cooldown, b.max_cooldown, self._clock, changed)

    def route(self, model: str) -> Route | None:
        return self.routes.get(model) or self.routes.get("*")

    def now(self) -> float:
        return self._clock()

    # --- outcomes ------------------------------------------------------------------------

    def succeeded(self, candidate: Candidate, cred: Credential) -> None:
        candidate.outcomes.append(True)
        cred.breaker.success()
        if any(r.brownout for r in self.routes.values()):
            # A credential back in service (a rewritten key file) ends a brownout too.
            self._refresh_brownouts()

    def neutral(self, candidate: Candidate, cred: Credential) -> None:
        """The attempt said nothing about the upstream's health (the client left, a 4xx)."""
        cred.breaker.release()

    def failed(
        self,
        candidate: Candidate,
        cred: Credential,
        failure: Failure,
        error: str,
        retry_after: float | None = None,
    ) -> None:
        now = self._clock()
        candidate.outcomes.append(False)
        candidate.last_error, candidate.last_error_at = error, now
        cred.last_error = error
        if failure == "auth":
            cred.rotated_out = True
            cred.breaker.release()
            self._events(
                "credential_rotated_out",
                {"upstream": cred.upstream, "credential": cred.name, "error": error},
            )
            self._refresh_brownouts()
            return
        if failure == "no_model":
            # The upstream is fine; this candidate names a model it does not serve.
            cred.breaker.release()
            return
        if failure == "rate_limited":
            # A rate limit says the credential is busy, not that the upstream is broken.
            cred.cooling_until = now + (retry_after if retry_after is not None else 1.0)
            cred.breaker.release()
            return
        if retry_after is not None:
            cred.cooling_until = now + retry_after
        cred.breaker.failure()

    # --- health --------------------------------------------------------------------------

    def _refresh_brownouts(self) -> None:
        for route in self.routes.values():
            down = not any(c.up for c in route.candidates)
            if down and not route.brownout:
                route.brownout, route.brownout_since = True, self._clock()
                self._events("brownout", self._route_health(route))
            elif not down and route.brownout:
                lasted = self._clock() - (route.brownout_since or self._clock())
                route.brownout, route.brownout_since = False, None
                self._events("recovery", self._route_health(route) | {"lasted_s": lasted})

    def retry_after(self, route: Route) -> float:
        """Seconds until some candidate of `route` may be tried again."""
        now = self._clock()
        waits = [
            max(c.cooling_until, c.breaker.retry_at) - now
            for cand in route.candidates
            for c in cand.credentials
            if not c.rotated_out
        ]
        return max(0.0, min(waits)) if waits else 60.0

    def _route_health(self, route: Route) -> dict[str, Any]:
        now = self._clock()
        return {
            "route": route.alias,
            "brownout": route.brownout,
            "candidates": [
                {
                    "candidate": cand.key,
                    "state": str(cand.state()),
                    "error_rate": round(cand.error_rate(), 4),
                    "attempts": len(cand.outcomes),
                    "last_error": cand.last_error,
                    "last_error_age_s": None
                    if cand.last_error_at is None
                    else round(now - cand.last_error_at, 3),
                    "credentials": [
                        {
                            "name": c.name,
                            "state": "rotated_out" if c.rotated_out else str(c.breaker.state),
                            "cooling_s": round(max(0.0, c.cooling_until - now), 3),
                            "last_error": c.last_error,
                        }
                        for c in cand.credentials
                    ],
                }
                for cand in route.candidates
            ],
        }

    def health(self) -> dict[str, Any]:
        routes = [self._route_health(r) for r in self.routes.values()]
        return {
            "status": "brownout" if any(r["brownout"] for r in routes) else "ok",
            "routes": routes,
        }
