"""The `/overnight/v1` endpoints: agents' own processes asking the command center.

Owns the answers to an agent's hook (Claude Code's PreToolUse), to `overnight try`
(judging its trial, the trial desk: submit, wait for, stop a trial, read the lab
notebook) and to the question how a human answered an approval, each by the
agent's virtual key; and `Governance` and `Desk`, what the gateway asks of the
command center for them. Every call to them may block, so each runs off the loop.
Knows nothing about LLM requests.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any, Protocol

from overnight.errors import UserError
from overnight.gateway.asgi import (
    BAD_KEY,
    Receive,
    Scope,
    Send,
    presented_key,
    read_body,
    reply,
)
from overnight.gateway.codec import loads
from overnight.gateway.keys import KeyRing

PREFIX = "/overnight/v1/"


class Governance(Protocol):
    """What the gateway asks the command center's governance
    (overnight.governance.governor.Governor); it may block, so it runs off the loop,
    except `llm`, which only decides (tens of microseconds) and queues its record."""

    def hook(self, agent: str, payload: dict[str, Any]) -> dict[str, Any]: ...
    def judge(self, agent: str, request: dict[str, Any]) -> dict[str, Any]: ...
    def approval(self, agent: str, approval_id: str) -> dict[str, Any] | None: ...
    def llm(self, agent: str, model: str, est_cost_usd: float, trial: int | None) -> Any: ...


class Desk(Protocol):
    """Where agents' own processes submit trials (overnight.lab.desk.TrialDesk); every
    call may block, so each runs off the loop. `submit` raises UserError (409) when the
    trial cannot start, saying why, and ValueError (400) on a bad request."""

    def submit(self, agent: str, request: dict[str, Any]) -> dict[str, Any]: ...
    def trial(self, agent: str, number: int, wait: float) -> dict[str, Any] | None: ...
    def stop(self, agent: str, number: int) -> bool: ...
    def notes(self, agent: str) -> dict[str, Any]: ...


async def serve(
    path: str,
    method: str,
    scope: Scope,
    headers: dict[str, str],
    receive: Receive,
    send: Send,
    keys: KeyRing,
    governor: Governance | None,
    desk: Desk | None,
) -> None:
    """The command center's answers to agents' own processes, by their virtual key:
    `POST hook` (Claude Code's PreToolUse hook), `POST judge` (`overnight try`
    asking about its trial), `GET approvals/ID` (how a human answered), and the
    trial desk: `POST trials`, `GET trials/N?wait=S`, `POST trials/N/stop`, `GET notes`."""
    agent = keys.verify(presented_key(headers))
    if agent is None:
        await reply(send, 401, _problem(BAD_KEY))
        return
    if path in ("trials", "notes") or path.startswith("trials/"):
        await _desk(desk, agent, path, method, scope, headers, receive, send)
        return
    if governor is None:
        await reply(send, 503, _problem("this gateway runs without governance"))
        return
    loop = asyncio.get_running_loop()
    try:
        if method == "POST" and path in ("hook", "judge"):
            raw = await read_body(receive, 1 << 20, headers.get("content-length"))
            body = None if raw is None else loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            ask = governor.hook if path == "hook" else governor.judge
            answer = await loop.run_in_executor(None, ask, agent, body)
        elif method == "GET" and path.startswith("approvals/"):
            found = await loop.run_in_executor(
                None, governor.approval, agent, path[len("approvals/") :]
            )
            if found is None:
                await reply(send, 404, _problem(f"agent {agent} has no approval {path[10:]}"))
                return
            answer = found
        else:
            await reply(send, 404, _problem(f"no endpoint {method} {PREFIX}{path}"))
            return
    except ValueError as exc:
        await reply(send, 400, _problem(str(exc)))
        return
    await reply(send, 200, json.dumps(answer).encode())


async def _desk(
    desk: Desk | None,
    agent: str,
    path: str,
    method: str,
    scope: Scope,
    headers: dict[str, str],
    receive: Receive,
    send: Send,
) -> None:
    if desk is None:
        await reply(send, 503, _problem("no trial desk here: is `overnight run` running?"))
        return
    loop = asyncio.get_running_loop()
    parts = path.split("/")
    try:
        if method == "POST" and parts == ["trials"]:
            raw = await read_body(receive, 1 << 20, headers.get("content-length"))
            body = None if raw is None else loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            answer = await loop.run_in_executor(None, desk.submit, agent, body)
        elif method == "GET" and parts == ["notes"]:
            answer = await loop.run_in_executor(None, desk.notes, agent)
        elif len(parts) >= 2 and parts[1].isdigit() and method in ("GET", "POST"):
            number = int(parts[1])
            if method == "GET" and len(parts) == 2:
                query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
                wait = float(query.get("wait", ["0"])[0])
                found = await loop.run_in_executor(None, desk.trial, agent, number, wait)
            elif method == "POST" and parts[2:] == ["stop"]:
                stopped = await loop.run_in_executor(None, desk.stop, agent, number)
                found = {"stopped": number} if stopped else None
            else:
                found = None
            if found is None:
                await reply(send, 404, _problem(f"agent {agent} has no trial {number} here"))
                return
            answer = found
        else:
            await reply(send, 404, _problem(f"no endpoint {method} {PREFIX}{path}"))
            return
    except ValueError as exc:
        await reply(send, 400, _problem(str(exc)))
        return
    except UserError as exc:
        await reply(send, 409, _problem(str(exc)))
        return
    await reply(send, 200, json.dumps(answer).encode())


def _problem(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
