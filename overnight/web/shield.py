"""What keeps a browser from being turned against the command center: the Host allowlist
and the protective headers on every answer.

Owns two things done to every request before the token check sees it:
- **The Host allowlist.** A web page anywhere can make its visitor's browser talk to
  127.0.0.1 by DNS rebinding: its own name, re-pointed at this machine, so the browser
  takes the command center for that site. Such a request still carries the site's own
  name as `Host`, so only the names the command center is reached by are answered
  (localhost, 127.0.0.1, [::1], the `--host` it was given; with a wildcard `--host`
  such as 0.0.0.0, also this machine's name and any IP address, which cannot be
  rebound). Anything else gets 421, and a websocket's handshake is refused the same way.
  The port is not checked: a rebinding page's Host names its own site whatever the port,
  and `ssh -L 8080:127.0.0.1:PORT` brings the page to another local port.
- **The headers.** A Content-Security-Policy that lets the page load scripts, styles and
  connections from the command center only and be framed by nobody
  (`frame-ancestors 'none'`, with `X-Frame-Options: DENY` for older browsers: the approve
  buttons cannot be clickjacked), `Referrer-Policy: no-referrer` and
  `X-Content-Type-Options: nosniff`. The one inline style source the page has is
  xterm.js, which writes `<style>` elements; they pass with a nonce made for each
  response, put in `scope["csp_nonce"]` for the page to hand to its script.

Knows nothing about tokens, pages or agents.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterable

from overnight.web.auth import ASGIApp, Message, Receive, Scope, Send, header

LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")

MISDIRECTED = (
    "421: this command center does not answer to the host name {name!r}: a page of another "
    "site may be trying to reach it through your browser (DNS rebinding).\n"
    "Open it at the URL `overnight run` (or `overnight up`) printed; to reach it by another "
    "name, start it with `--host NAME`."
)


def policy(nonce: str) -> str:
    """The Content-Security-Policy of one response."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            f"style-src 'self' 'nonce-{nonce}'",
            "img-src 'self' data:",  # data: for the page's empty favicon
            "font-src 'self'",
            "connect-src 'self'",  # fetch, the event stream, the terminal's websocket
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


def host_name(host: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.partition(":")[0] if host.count(":") == 1 else host


class Shield:
    """Refuses a request whose Host is not one the command center is reached by, and sets
    the protective headers on every answer (see the module docstring)."""

    def __init__(self, app: ASGIApp, listen_host: str) -> None:
        self.app = app
        bare = listen_host.strip("[]").lower()
        names = {*LOOPBACK, bare}
        self.any_address = bare in WILDCARDS
        if self.any_address:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = frozenset(n for n in names if n)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name = host_name(host)
        if name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        headers = _headers(nonce)
        host = header(scope, b"host")
        if not self.allows(host):
            await _misdirected(scope, receive, send, host or "", headers)
            return
        scope["csp_nonce"] = nonce

        async def protected(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                message = {**message, "headers": _replace(message.get("headers", ()), headers)}
            await send(message)

        await self.app(scope, receive, protected)


def _headers(nonce: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy(nonce).encode()),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
    ]


def _replace(
    current: Iterable[tuple[bytes, bytes]], ours: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    names = {name for name, _ in ours}
    return [(k, v) for k, v in current if bytes(k).lower() not in names] + ours


async def _misdirected(
    scope: Scope, receive: Receive, send: Send, host: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = MISDIRECTED.format(name=host_name(host) or host).encode()
    head = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 421, "headers": head})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 421, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
    else:  # closing before accepting answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008, "reason": body[:120].decode()})
