"""The command center's live channels: the event stream and an agent's terminal.

Owns `/events` (server-sent events for one view or all, resumed from
`Last-Event-ID` or `?after=`; the hub's `stream` writes them) and
`/agents/{name}/terminal` (a websocket to the agent's tmux session: its bytes
out, keystrokes and resizes in). No agent's process may type into a terminal,
its own included: keystrokes can answer its CLI's permission prompts. Knows
nothing about pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

from overnight.web.events import TOPICS
from overnight.web.peers import agent_peer
from overnight.web.site import Refused, Site
from overnight.web.terminals import Attachment, output


def router(site: Site) -> APIRouter:
    api = APIRouter()
    hub, live, renderer = site.hub, site.live, site.renderer

    @api.get("/events")
    async def events(request: Request, view: str = "all", after: int | None = None) -> Response:
        if view != "all" and view not in TOPICS:
            allowed = ", ".join(["all", *TOPICS])
            raise Refused(400, f"view {view!r} is unknown; use one of: {allowed}")
        if not hub.ready.is_set():
            await asyncio.to_thread(site.ready)
        hub.bind(asyncio.get_running_loop())
        header = request.headers.get("last-event-id")
        start = int(header) if header and header.isdigit() else after

        def screens() -> list[Any]:
            with live.lock:
                return renderer.screens(list(live.agents))

        return StreamingResponse(
            hub.stream(view, start, header is not None, screens),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @api.websocket("/agents/{name}/terminal")
    async def terminal(ws: WebSocket, name: str, cols: int = 120, rows: int = 40) -> None:
        await _attach(site, ws, name, cols, rows)

    return api


async def _attach(site: Site, ws: WebSocket, name: str, cols: int, rows: int) -> None:
    """An interactive terminal into agent `name`'s tmux session, over `ws`."""
    refused = await asyncio.to_thread(agent_peer, ws.scope.get("client"), ws.scope.get("server"))
    await ws.accept()
    session = site.sources.terminals.get(name)
    tmux = site.sources.tmux
    problem = None
    if refused is not None:
        problem = f"refused: no agent can use an agent's terminal ({refused})"
    elif name not in site.live.agents:
        problem = f"no agent named {name!r} in run {site.live.run_id}"
    elif session is None or tmux is None:
        problem = f"agent {name!r} runs inside overnight (no terminal): see its tile and the ledger"
    elif await asyncio.to_thread(tmux.get, session) is None:
        problem = f"agent {name!r} has no terminal session right now (it is being started?)"
    if problem is not None:
        await ws.send_text(f"\r\n{problem}\r\n")
        await ws.close(code=4403 if refused else 4404, reason=problem[:120])
        return
    assert session is not None and tmux is not None
    attachment = Attachment(tmux, session, max(2, min(cols, 500)), max(2, min(rows, 200)))

    async def pump() -> None:
        async for chunk in output(attachment):
            await ws.send_bytes(chunk)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code=1000, reason="the terminal closed")

    reader = asyncio.create_task(pump())
    try:
        while True:
            message = json.loads(await ws.receive_text())
            if "input" in message:
                attachment.write(str(message["input"]).encode())
            elif "resize" in message:
                c, r = message["resize"]
                attachment.resize(int(c), int(r))
    except (WebSocketDisconnect, RuntimeError, ValueError, TypeError, KeyError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await asyncio.to_thread(attachment.close)
