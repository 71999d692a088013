"""The command center's governance, asked from an agent's own process.

`overnight try` runs in the agent's process, but decisions and their audit
records are made only by the command center (`governor.Governor`). This is the
lab's `Judge` there: it posts the trial's changed paths, or its measured
improvement, to the command center's `/overnight/v1/judge` (served by the
gateway, authenticated with the agent's virtual key) and, when policy asks for
a human, polls the approval until it is answered.

Fails closed: when the command center cannot be reached or answers nonsense,
the trial is refused with the reason. Knows nothing about policies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from overnight import bearer
from overnight.records import Trial

POLL_EVERY = 0.5
TIMEOUT = 30.0


class CommandCenterError(Exception):
    """The command center did not give a usable answer."""


class RemoteJudge:
    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def approve_edits(
        self, agent: str, trial: Trial, paths: Sequence[str], stop: threading.Event
    ) -> str | None:
        return self._ask({"check": "edits", "trial": trial.number, "paths": list(paths)}, stop)

    def approve_keep(
        self,
        agent: str,
        trial: Trial,
        metric: float,
        gain: float,
        stop: threading.Event,
        *,
        concern: str | None = None,
    ) -> str | None:
        request: dict[str, Any] = {
            "check": "keep", "trial": trial.number, "metric": metric, "gain": gain,
        }  # fmt: skip
        if concern is not None:
            request["concern"] = concern
        return self._ask(request, stop)

    def _ask(self, request: dict[str, Any], stop: threading.Event) -> str | None:
        try:
            verdict = self._call("POST", "/overnight/v1/judge", request)
            decision, reason = verdict.get("decision"), str(verdict.get("reason") or "")
            if decision == "allow":
                return None
            if decision == "deny":
                return reason or "denied by policy"
            approval = verdict.get("approval")
            if decision != "review" or not isinstance(approval, str):
                raise CommandCenterError(f"unexpected verdict {verdict!r:.200}")
            print(f"waiting for a human's approval {approval}: {reason}", flush=True)
            while not stop.wait(POLL_EVERY):
                status = self._call("GET", f"/overnight/v1/approvals/{approval}", None)
                state = status.get("status")
                if state == "approved":
                    return None
                if state in ("denied", "expired"):
                    note = f": {status['note']}" if status.get("note") else ""
                    return f"approval {approval} {state}{note} ({reason})"
                if state != "pending":
                    raise CommandCenterError(f"approval {approval} has status {state!r}")
            return f"stopped while approval {approval} was pending"
        except CommandCenterError as exc:
            return f"the command center could not judge this trial ({exc})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        started = time.monotonic()
        try:
            answer = bearer.call(self.url, self.key, method, path, body, TIMEOUT)
        except OSError as exc:
            waited = time.monotonic() - started
            raise CommandCenterError(
                f"unreachable at {self.url} after {waited:.1f}s: {exc}"
            ) from None
        raw = answer.raw
        if answer.status != 200:
            raise CommandCenterError(f"{method} {path} answered {answer.status}: {raw[:200]!r}")
        data = answer.json()
        if data is None and raw.strip() != b"null":
            raise CommandCenterError(f"{method} {path} answered non-JSON {raw[:200]!r}")
        if not isinstance(data, dict):
            raise CommandCenterError(f"{method} {path} answered {data!r:.200}")
        return data
