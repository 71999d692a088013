"""The command center's web app: its routers put together behind the token check.

Owns `CommandCenter` (a `site.Site` with its FastAPI app): the routers by job,
the pages and their fragments (`pages`), steering agents (`steering`), the
event stream and the terminals' websocket (`stream`), and, when
`Sources.governor` is set, the lab's governance views, the approvals inbox and
its REST API (`approvals`) and the audit (`audit`); the answer to a `Refused`
request; the static files; the `Server-Timing` header. Every request passes the
token check of `auth.AuthMiddleware`. Views added later come in as routers
(`extra_routers`) and nav entries (`extra_nav`), rendered with the same base
template (`Site.page`), with a live part (`render.LiveExtra`); endpoints with
their own callers' auth (hooks) are listed in `public_prefixes`. Knows nothing
about how the server is run or where the data comes from beyond `Sources`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from overnight.web import approvals, audit, pages, steering, stream
from overnight.web.auth import Access, AuthMiddleware
from overnight.web.render import LiveExtra
from overnight.web.site import Refused, Site
from overnight.web.sources import Sources

STATIC = Path(__file__).parent / "static"
VENDOR_FILES = ("htmx.min.js", "xterm.js", "xterm.css", "addon-fit.js")


def missing_assets() -> list[str]:
    """Front-end files missing from static/vendor (committed there, credited in its
    THIRD_PARTY.toml): only a broken install or checkout lacks them."""
    return [name for name in VENDOR_FILES if not (STATIC / "vendor" / name).is_file()]


class ServerTiming:
    """Adds `Server-Timing: app;dur=MS` (time to the response's head) to every answer, so
    the browser's devtools and the benchmark see how long the server took."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - started) * 1000
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"server-timing", f"app;dur={took:.2f}".encode()),
                    ],
                }
            await send(message)

        await self.app(scope, receive, timed)


class CommandCenter(Site):
    """The app, its live picture and its event hub, for one run."""

    def __init__(
        self,
        sources: Sources,
        access: Access,
        *,
        extra_routers: Sequence[APIRouter] = (),
        extra_nav: Sequence[tuple[str, str, str]] = (),
        public_prefixes: Sequence[str] = (),
        extra_templates: Sequence[Path] = (),
    ) -> None:
        governor = sources.governor
        inbox = approvals.Inbox(governor) if governor is not None else None
        extras: list[LiveExtra] = [inbox] if inbox is not None else []
        nav = [*pages.NAV, *([approvals.NAV, audit.NAV] if inbox is not None else []), *extra_nav]
        super().__init__(sources, access, nav, extras, extra_templates)
        routers = [pages.router(self), steering.router(self), stream.router(self)]
        if governor is not None and inbox is not None:
            view = audit.AuditView(governor)
            routers += [approvals.router(inbox, self), audit.router(view, self)]
        self.api = FastAPI(title="overnight", docs_url=None, redoc_url=None, openapi_url=None)
        self.api.add_exception_handler(Refused, _refused)
        for router in [*routers, *extra_routers]:
            self.api.include_router(router)
        self.api.mount("/static", StaticFiles(directory=STATIC), name="static")
        self.app = AuthMiddleware(ServerTiming(self.api), access, tuple(public_prefixes))


async def _refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return PlainTextResponse(f"{exc.status}: {exc.message}", status_code=exc.status)


__all__ = ["CommandCenter", "Refused", "missing_assets"]
