"""Who may use the command center: a per-run token, the cookie it becomes, and CSRF checks.

Owns the token (random for each start of the command center; kept in memory as a
sha256 only, and given to the user once, in the URL printed at start and in
`.overnight/web.url`, mode 0600), the first visit that trades `?token=` for an
HttpOnly SameSite=Strict cookie and redirects to drop it from the address bar,
the 401 for anything that arrives without either, the CSRF token every
state-changing request must send back (`X-CSRF-Token`, from the page's meta tag),
and the Origin check for websockets. Knows nothing about agents or pages.

Why a cookie named after the lab: cookies are not separated by port, and two
labs' command centers on 127.0.0.1 must not overwrite each other's.
"""

from __future__ import annotations

import hashlib
import hmac
import http.cookies
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from overnight import redaction
from overnight.paths import StateDir

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

UNAUTHORIZED = (
    "401: this command center needs its token.\n"
    "Open the URL that `overnight run` (or `overnight up`) printed at start, "
    "http://HOST:PORT/?token=...; it is also in .overnight/web.url in the lab (mode 600)."
)
STALE_CSRF = (
    "403: this request carried no valid CSRF token (header X-CSRF-Token). "
    "The page that sent it is stale or was not served by this command center: reload the page."
)
BAD_ORIGIN = "403: cross-origin websocket refused (its Origin is not this command center)."


def _sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Access:
    """The token of one start of the command center, and every check made with it.

    A first visit with the token opens a *session*: a random id, signed with a key
    that lives as long as this process, kept in the cookie. The CSRF token is the
    session's own (an HMAC of its id), so a token taken from another session, or
    from before a restart, is refused.
    """

    def __init__(self, cookie_name: str, token: str | None = None) -> None:
        token = token or secrets.token_urlsafe(24)
        redaction.register(token)  # it opens the page: never in a log or the store
        self.cookie_name = cookie_name
        self._hash = _sha256(token)
        self._key = secrets.token_bytes(32)
        self._token: str | None = token
        """Handed out once, by `take_token()`; only its hash stays."""

    @classmethod
    def for_lab(cls, root: Path, token: str | None = None) -> Access:
        tag = hashlib.sha1(str(root.resolve()).encode(), usedforsecurity=False).hexdigest()[:8]
        return cls(f"overnight_{tag}", token)

    def take_token(self) -> str:
        """The token in plain text, once: whoever starts the server prints it."""
        token, self._token = self._token, None
        if token is None:
            raise RuntimeError("the command center's token was already handed out")
        return token

    def valid(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(_sha256(token or ""), self._hash)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:40]

    def new_session(self) -> str:
        """A new session's cookie value: `id.signature`."""
        sid = secrets.token_urlsafe(16)
        return f"{sid}.{self._sign('session', sid)}"

    def csrf_token(self, session: str) -> str:
        """The CSRF token of session `session` (its id)."""
        return self._sign("csrf", session)

    def csrf_ok(self, session: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(session), presented or "")

    def cookie_header(self, value: str) -> str:
        return f"{self.cookie_name}={value}; Path=/; HttpOnly; SameSite=Strict"

    def session_of(self, scope: Scope) -> str | None:
        """The session id of a request's valid cookie, or None."""
        raw = header(scope, b"cookie")
        if not raw:
            return None
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(raw)
        except http.cookies.CookieError:
            return None
        morsel = jar.get(self.cookie_name)
        if morsel is None:
            return None
        sid, _, signature = morsel.value.partition(".")
        if not sid or not hmac.compare_digest(self._sign("session", sid), signature):
            return None
        return sid


def write_url_file(state_dir: Path, url: str) -> Path:
    """`.overnight/web.url`, readable by the user only: the way back in for a service."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = StateDir(state_dir).web_url
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(url + "\n")
    os.replace(tmp, path)
    return path


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def same_origin(scope: Scope) -> bool:
    """The request's Origin (when a browser sent one) names the host it was sent to."""
    origin = header(scope, b"origin")
    if origin is None:
        return bool(scope["type"] != "websocket")  # browsers always send Origin on websockets
    host = header(scope, b"host")
    return host is not None and origin in (f"http://{host}", f"https://{host}")


class AuthMiddleware:
    """Every request needs the cookie (or, on the first visit, `?token=`); unsafe methods
    also need the CSRF header and a same-origin Origin. Puts the session in scope["session_id"].

    Paths under `public_prefixes` pass untouched: endpoints that authenticate their callers
    themselves (agents' hooks with their own keys), never pages.
    """

    def __init__(self, app: ASGIApp, access: Access, public_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.access = access
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (
            self.public_prefixes and str(scope["path"]).startswith(self.public_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        session = self.access.session_of(scope)
        if session is None:
            query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
            token = query.get("token")
            if (
                scope["type"] == "http"
                and scope["method"] == "GET"
                and token
                and self.access.valid(token)
            ):
                await self._first_visit(scope, send, query)
                return
            await self._refuse(scope, receive, send, 401, UNAUTHORIZED)
            return
        if not same_origin(scope):
            await self._refuse(scope, receive, send, 403, BAD_ORIGIN)
            return
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            presented = header(scope, CSRF_HEADER.encode())
            if not self.access.csrf_ok(session, presented):
                await self._refuse(scope, receive, send, 403, STALE_CSRF)
                return
        scope["session_id"] = session
        await self.app(scope, receive, send)

    async def _first_visit(self, scope: Scope, send: Send, query: dict[str, str]) -> None:
        """Set the cookie and send the browser to the same page without the token."""
        query.pop("token", None)
        location = scope["path"] + (f"?{urlencode(query)}" if query else "")
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", self.access.cookie_header(self.access.new_session()).encode()),
                    (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            # Closing before accepting answers the handshake with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = message.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
