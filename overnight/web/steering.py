"""Steering agents from the command center: pause, resume or restart one.

Owns `POST /agents/{name}/pause|resume|restart`, answered 204 when done. Goes
through the supervisor's `AgentControl` (`Sources.control`), and is refused when
no supervisor runs beside the page or when the process on the other end of the
connection is an agent's (`peers`). Knows nothing about how agents run.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from overnight.agents.supervisor import ControlRefused, UnknownAgent
from overnight.web.peers import agent_peer
from overnight.web.site import Refused, Site

ACTIONS = ("pause", "resume", "restart")


def router(site: Site) -> APIRouter:
    api = APIRouter()

    @api.post("/agents/{name}/{action}")
    def steer(request: Request, name: str, action: str) -> Response:
        refused = agent_peer(request.scope.get("client"), request.scope.get("server"))
        if refused is not None:
            raise Refused(403, f"refused: no agent can steer agents ({refused})")
        site.ready()
        with site.live.lock:
            site.agent(name)
        control = site.sources.control
        if action not in ACTIONS:
            raise Refused(
                404, f"no action {action!r}; an agent can be paused, resumed or restarted"
            )
        if control is None:
            raise Refused(409, "agents cannot be steered: no supervisor runs beside this page")
        try:
            getattr(control, action)(name)
        except UnknownAgent as exc:
            raise Refused(404, str(exc)) from None
        except ControlRefused as exc:
            raise Refused(409, str(exc)) from None
        return Response(status_code=204)

    return api
