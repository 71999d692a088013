"""The Claude Code PreToolUse hook: asks the command center before every tool call.

Claude Code runs this file as a command hook (`python -I -S hook.py`, wired into
each Claude Code agent's settings by `overnight.agents.runtimes`) with the tool
call as JSON on stdin. It posts the call to the command center (the gateway's
`/overnight/v1/hook`, authenticated with the agent's virtual key) and prints the
answer in the hook protocol: exit 0 with

    {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                            "permissionDecision": "allow" | "deny",
                            "permissionDecisionReason": "..."}}

When the policy says *review*, the call waits here for a human's answer to its
approval (polling the command center) and then allows or denies it.

It fails closed: any error — the command center unreachable, a timeout, a reply
it does not understand, even a bug in this file — denies the call with exit 2
and the reason on stderr, which Claude Code shows the model. (Exit 1 would be a
"non-blocking error" to Claude Code, which lets the tool run: never exit 1.)

Standard library only, and nothing from the `overnight` package, so that it
starts in a few milliseconds and cannot be broken by the environment it runs in.
Knows nothing about policies: the command center decides.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

URL_ENV = "OVERNIGHT_HOOK_URL"
"""The command center's base URL (the gateway's)."""
KEY_ENV = "ANTHROPIC_API_KEY"
"""The agent's virtual key, already in a Claude Code agent's environment."""
WAIT_ENV = "OVERNIGHT_HOOK_WAIT"
"""Seconds to wait for a human's answer to an approval before denying."""
TIMEOUT_ENV = "OVERNIGHT_HOOK_TIMEOUT"
"""Seconds one exchange with the command center may take (default 10)."""
POLL_EVERY = 0.5


class Denied(Exception):
    """The call must not run; the message says why."""


def _call(
    base: str, path: str, key: str, body: bytes | None, timeout: float = 10.0
) -> dict[str, object]:
    """One HTTP/1.0 exchange over a plain socket: `urllib` alone costs 25 ms of imports."""
    if not base.startswith("http://"):
        raise Denied(f"{URL_ENV}={base!r} is not an http:// URL")
    host, _, port = base[len("http://") :].partition(":")
    method = "GET" if body is None else "POST"
    request = (
        f"{method} {path} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body or b'')}\r\n\r\n"
    )
    chunks = []
    try:
        with socket.create_connection((host, int(port or 80)), timeout=timeout) as sock:
            sock.sendall(request.encode() + (body or b""))
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (OSError, ValueError) as exc:
        raise Denied(f"the command center is unreachable at {base} ({exc})") from None
    raw = b"".join(chunks)
    head, _, content = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise Denied(f"the command center's reply is not HTTP: {raw[:100]!r}")
    if parts[1] != b"200":
        detail = content[:300].decode("utf-8", "replace")
        raise Denied(f"the command center answered {parts[1].decode()}: {detail}")
    try:
        reply = json.loads(content)
    except ValueError:
        raise Denied(f"the command center's reply is not JSON: {content[:200]!r}") from None
    if not isinstance(reply, dict):
        raise Denied(f"the command center's reply is not a JSON object: {reply!r:.200}")
    return reply


def decide(
    payload: bytes, base: str, key: str, wait: float, timeout: float = 10.0
) -> tuple[str, str]:
    """("allow" | "deny", reason) for the tool call in `payload`."""
    reply = _call(base, "/overnight/v1/hook", key, payload, timeout)
    decision, reason = reply.get("decision"), str(reply.get("reason") or "")
    if decision in ("allow", "deny"):
        return str(decision), reason
    if decision != "review":
        raise Denied(f"the command center's decision {decision!r} is not allow, deny or review")
    approval = reply.get("approval")
    if not isinstance(approval, str) or not approval:
        raise Denied("the command center asked for review without an approval id")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        answer = _call(base, f"/overnight/v1/approvals/{approval}", key, None, timeout)
        status = answer.get("status")
        note = str(answer.get("note") or "")
        if status == "approved":
            return (
                "allow",
                f"approved by a human (approval {approval}){': ' + note if note else ''}",
            )
        if status in ("denied", "expired"):
            return "deny", f"approval {approval} {status}{': ' + note if note else ''} ({reason})"
        if status != "pending":
            raise Denied(f"approval {approval} has an unknown status {status!r}")
        time.sleep(POLL_EVERY)
    return "deny", f"no human answered approval {approval} within {wait:.0f}s ({reason})"


def _out_of_time(_signum: int, _frame: object) -> None:
    raise Denied("no answer from the command center in time")


def main() -> int:
    try:
        base = os.environ.get(URL_ENV, "").rstrip("/")
        key = os.environ.get(KEY_ENV, "")
        if not base or not key:
            raise Denied(f"{URL_ENV} and {KEY_ENV} must be set for the overnight hook")
        wait = float(os.environ.get(WAIT_ENV) or 3600)
        timeout = float(os.environ.get(TIMEOUT_ENV) or 10)
        # one deadline for everything, inside Claude Code's own (wait + 120 s): a hook
        # that Claude Code has to time out counts as a non-blocking error there
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.setitimer(signal.ITIMER_REAL, wait + 60)
        decision, reason = decide(sys.stdin.buffer.read(), base, key, wait, timeout)
        output = {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": decision,
                "permissionDecisionReason": f"overnight: {reason}" if reason else "overnight",
            }
        }
        sys.stdout.write(json.dumps(output))
        sys.stdout.flush()
        return 0
    except Denied as exc:
        sys.stderr.write(f"overnight denied this tool call: {exc}\n")
    except BaseException as exc:  # fail closed on anything, even our own bug
        sys.stderr.write(f"overnight denied this tool call: the hook failed ({exc!r})\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
