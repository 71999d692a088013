"""The approvals inbox: an agent's action waiting for a person's yes or no.

Owns requesting, waiting, answering, expiry and the sweep over the store's
approvals; the short ids people type; the rule that no agent answers an
approval; and the optional webhook that announces a new one (Slack-compatible
JSON, retried, never in the asking agent's way). Each request, answer and
expiry is written with an `approval.*` event in the same transaction, which the
Auditor turns into an audit record (at once, when one is given here). Expired is
not denied: an approval nobody answered in time ends `expired`.

Knows nothing about policies (it is told the reason and the risk), the CLI or
the web page.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overnight.errors import UserError
from overnight.governance.audit import Auditor
from overnight.markers import AGENT_MARKER, SESSION_MARKER, TRIAL_MARKER
from overnight.paths import in_worktrees
from overnight.records import Approval
from overnight.store import Store
from overnight.units import parse_duration, span

log = logging.getLogger("overnight.approvals")

ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
"""Lowercase letters and digits minus the look-alikes (0/o, 1/l/i)."""
ID_LENGTH = 6
DEFAULT_TIMEOUT = 3600.0
WEBHOOK_TRIES = 3

__all__ = ["Approval", "ApprovalError", "Approvals", "agent_context", "new_id"]


class ApprovalError(UserError):
    """An answer that cannot be given: unknown id, already answered, expired, or asked
    by an agent."""


def new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def _normal(approval_id: str) -> str:
    return approval_id.strip().lower()


def agent_context(
    paths: Sequence[Path], env: Mapping[str, str] | None = None, pid: int | None = None
) -> str | None:
    """Why this process looks like an agent's, or None: an agent never answers an approval.

    Checks the environment, the process's ancestors' environments (an agent that
    clears its own variables still runs under the session that set them), and
    whether any of `paths` lies in an agent's worktree.
    """
    env = os.environ if env is None else env
    # set in every process overnight starts for an agent: its session, its experiments
    for name in (SESSION_MARKER, AGENT_MARKER, TRIAL_MARKER):
        if env.get(name):
            return f"{name} is set: this runs in an agent's session or experiment"
    ancestor = _marked_ancestor(os.getpid() if pid is None else pid, SESSION_MARKER)
    if ancestor is not None:
        return f"it runs under process {ancestor}, which belongs to an agent's session"
    for path in paths:
        if in_worktrees(path.resolve()):
            return f"{path} is inside an agent's worktree"
    return None


def _marked_ancestor(pid: int, name: str) -> int | None:
    """The nearest ancestor with `name` in its environment (Linux /proc)."""
    marker = f"{name}=".encode()
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if pid <= 1:
            return None
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # another user's process: not one of our agents
        if any(var.startswith(marker) for var in environ.split(b"\0")):
            return pid
    return None


class Approvals:
    """One lab's inbox. Thread-safe; as many processes as like may share a store."""

    def __init__(
        self,
        store: Store,
        lab: str,
        *,
        auditor: Auditor | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        webhook: str | None = None,
        poll: float = 0.2,
        webhook_backoff: Sequence[float] = (1.0, 4.0),
    ) -> None:
        if webhook is not None and urllib.parse.urlsplit(webhook).scheme not in ("http", "https"):
            raise UserError(
                f"[governance] webhook: {webhook!r} is not an http(s) URL.\n"
                '  fix: write the full URL, e.g. webhook = "https://hooks.slack.com/services/..."'
            )
        self.store = store
        self.lab = lab
        self.auditor = auditor
        self.timeout = timeout
        self.webhook = webhook
        self.poll = poll
        self.webhook_backoff = tuple(webhook_backoff)
        self._outbox: queue.Queue[Approval | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def for_lab(cls, store: Store, config: Any, *, auditor: Auditor | None = None) -> Approvals:
        """The inbox of the lab `config` (an OrgConfig) describes, with its `[governance]`
        approval_timeout and webhook when set."""
        governance = getattr(config, "governance", None)
        timeout = getattr(governance, "approval_timeout", None)
        return cls(
            store,
            config.lab.name,
            auditor=auditor,
            timeout=DEFAULT_TIMEOUT if timeout is None else parse_duration(timeout),
            webhook=getattr(governance, "webhook", None) or None,
        )

    # asking --------------------------------------------------------------------------------

    def request(
        self,
        run_id: str,
        agent: str,
        action: Mapping[str, Any],
        reason: str,
        *,
        risk: float | None = None,
        correlation: str | None = None,
        timeout: float | None = None,
    ) -> Approval:
        """File a pending approval (expiring after `timeout`, default the inbox's) and
        announce it; returns at once."""
        now = time.time()
        expires = now + (self.timeout if timeout is None else timeout)
        for _ in range(20):
            approval = Approval(
                new_id(), self.lab, run_id, agent, dict(action), reason, risk, correlation,
                now, expires,
            )  # fmt: skip
            if self.store.add_approval(approval):
                break
        else:  # pragma: no cover - 20 collisions in a space of 887 million
            raise RuntimeError("could not find a free approval id")
        self._audit()
        if self.webhook:
            self._announce(approval)
        return approval

    def wait(
        self,
        approval_id: str,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Approval:
        """Block until the approval is answered or expires, `stop` is set or `timeout`
        seconds pass; returns it as it then stands (still pending on stop or timeout).
        The agent shows as `waiting` meanwhile and `working` once it is answered."""
        stop = stop or threading.Event()
        approval = self.get(approval_id)
        if approval is None:
            raise ApprovalError(self._unknown(approval_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        if approval.status != "pending":
            return approval
        self.store.set_agent_state(
            approval.run_id, approval.agent, "waiting",
            approval=approval.id, reason=approval.reason,
        )  # fmt: skip
        while approval.status == "pending":
            left = self.poll if deadline is None else min(self.poll, deadline - time.monotonic())
            until_expiry = approval.expires_at - time.time()
            if left <= 0 or stop.wait(max(0.0, min(left, until_expiry + 0.01))):
                return approval
            current = self.get(approval.id)
            assert current is not None
            approval = current
        self.store.set_agent_state(
            approval.run_id, approval.agent, "working",
            approval=approval.id, answer=approval.status,
        )  # fmt: skip
        return approval

    # answering -----------------------------------------------------------------------------

    def answer(
        self, approval_id: str, approve: bool, note: str | None = None, *, by: str
    ) -> Approval:
        """Approve or deny a pending approval; ApprovalError (saying which status, since
        when) when it is unknown, already answered or expired."""
        approval_id = _normal(approval_id)
        current = self.store.get_approval(approval_id)
        if current is None or current.lab != self.lab:
            raise ApprovalError(self._unknown(approval_id))
        answered = self.store.answer_approval(
            approval_id, "approved" if approve else "denied", by=by, note=note, at=time.time()
        )
        if answered is None:
            self.sweep()  # a lapsed one is recorded expired (and audited) before we say so
            current = self.store.get_approval(approval_id)
            assert current is not None
            raise ApprovalError(self._refusal(current, approve))
        self._audit()
        return answered

    def _unknown(self, approval_id: str) -> str:
        return (
            f"no approval {approval_id!r} in lab {self.lab!r}.\n"
            "  fix: `overnight approvals DIR` lists the pending ones with their ids."
        )

    def _refusal(self, a: Approval, approve: bool) -> str:
        verb = "approved" if approve else "denied"
        when = _clock(a.answered_at)
        if a.status == "expired":
            return (
                f"approval {a.id} expired at {when}, unanswered after "
                f"{span(round(a.expires_at - a.created_at), seconds_below=120)}: it can no longer be {verb}.\n"
                f"  the agent ({a.agent}) was told no; it may ask again."
            )
        note = f" (note: {a.note})" if a.note else ""
        return (
            f"approval {a.id} was already {a.status} by {a.answered_by} at {when}{note}; "
            "an answer cannot be changed."
        )

    # reading -------------------------------------------------------------------------------

    def get(self, approval_id: str) -> Approval | None:
        """The approval as it stands now (a lapsed one is swept to `expired` first)."""
        approval = self.store.get_approval(_normal(approval_id))
        if approval is None or approval.lab != self.lab:
            return None
        if approval.status == "pending" and approval.expires_at <= time.time():
            self.sweep()
            approval = self.store.get_approval(approval.id)
        return approval

    def pending(self) -> list[Approval]:
        """Pending approvals, oldest first (lapsed ones swept to `expired` first)."""
        self.sweep()
        return self.store.approvals(self.lab, statuses=["pending"])

    def sweep(self) -> list[Approval]:
        """Record every lapsed pending approval as `expired`; returns those."""
        expired = self.store.expire_approvals(self.lab, time.time())
        if expired:
            self._audit()
        return expired

    def _audit(self) -> None:
        if self.auditor is not None:
            self.auditor.follow_once()

    # the webhook ---------------------------------------------------------------------------

    def _announce(self, approval: Approval) -> None:
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_all, name="overnight-approval-webhook", daemon=True
                )
                self._sender.start()
        self._outbox.put(approval)

    def _send_all(self) -> None:
        while True:
            approval = self._outbox.get()
            if approval is None:
                return
            self._send(approval)

    def _send(self, approval: Approval) -> None:
        assert self.webhook is not None
        body = json.dumps(webhook_message(approval)).encode()
        host = urllib.parse.urlsplit(self.webhook).netloc  # the path of a Slack URL is secret
        for attempt in range(1, WEBHOOK_TRIES + 1):
            request = urllib.request.Request(
                self.webhook, body, {"content-type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                error = f"HTTP {exc.code}"
            except OSError as exc:
                error = str(exc)
            final = attempt == WEBHOOK_TRIES
            log.warning("approval %s: webhook to %s failed (%s)", approval.id, host, error)
            self.store.append_event(
                approval.run_id,
                "approval.webhook_failed",
                {"id": approval.id, "host": host, "error": error, "try": attempt,
                 "of": WEBHOOK_TRIES, "final": final},
                agent=approval.agent,
            )  # fmt: skip
            if final:
                return
            pause = self.webhook_backoff[min(attempt - 1, len(self.webhook_backoff) - 1)]
            if self._closing.wait(pause):
                return

    def close(self, timeout: float = 15.0) -> None:
        """Deliver what is queued (up to `timeout` seconds), then stop the sender."""
        sender = self._sender
        if sender is None:
            return
        self._outbox.put(None)
        sender.join(timeout)
        self._closing.set()
        sender.join(1.0)


def webhook_message(a: Approval) -> dict[str, Any]:
    """A Slack-compatible message: `text` for any receiver, `blocks` for Slack."""
    action = dict(a.action)
    what = next(
        (str(action[k]) for k in ("command", "path", "tool", "model") if action.get(k)),
        json.dumps(action, sort_keys=True)[:200],
    )
    kind = action.get("kind", "action")
    risk = "" if a.risk is None else f" (risk {a.risk:.2f})"
    text = (
        f"overnight · {a.lab}: {a.agent} waits for approval of a {kind}: `{what}`. "
        f"Why: {a.reason}{risk}. Answer with `overnight approve {a.id}` or "
        f"`overnight deny {a.id}` before {_clock(a.expires_at)}."
    )
    context = f"approval `{a.id}` · run {a.run_id} · expires {_clock(a.expires_at)}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
