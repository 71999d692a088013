"""The governor: the command center's governance, judging every agent action as it comes.

Owns turning what an agent is about to do into a decision that is recorded and,
when policy says *review*, an approval a human answers: tool calls from Claude
Code's PreToolUse hook (`hook`), a trial's changed files and a measured
improvement (`approve_edits` / `approve_keep`, the lab's `Judge`, in process for
built-in agents and through `judge` for `overnight try` in an agent's process),
and LLM requests at the gateway (`llm`). Every decision is appended to the audit
chain with the policy version, risk and matching rules, and traced as a span
with `overnight.policy.id`, `overnight.risk.score` and `overnight.decision`.

It fails closed: an action it cannot judge is denied, and an audit record that
cannot be written denies the action it would have recorded.

Runs only in the command center's process (`overnight run` / `up`), never in an
agent's. Knows nothing about HTTP: the gateway serves its endpoints.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from overnight.governance.action import Action
from overnight.governance.approvals import Approvals
from overnight.governance.audit import Auditor, Entry, correlation_id
from overnight.governance.decision import Decision, Effect, strictest
from overnight.governance.policy import Policy
from overnight.records import Trial
from overnight.store import Store

log = logging.getLogger("overnight.governance")
_tracer = trace.get_tracer("overnight.governance")
_MAX_TEXT = 2000  # characters of any one string an audit record keeps (a Write's content...)


@dataclass(frozen=True)
class Verdict:
    """What the agent hears: allow, deny, or review with the approval to wait for."""

    effect: Effect
    reason: str
    approval: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.effect.value, "reason": self.reason}
        if self.approval is not None:
            out["approval"] = self.approval
        return out


class Governor:
    """Thread-safe: the gateway's threads, the agents' threads and the web app share one."""

    def __init__(
        self,
        policy: Policy,
        store: Store,
        run_id: str,
        auditor: Auditor,
        approvals: Approvals,
        *,
        autonomy: Mapping[str, str],
        protected: Sequence[str],
    ) -> None:
        self.policy = policy
        self.store = store
        self.run_id = run_id
        self.auditor = auditor
        self.approvals = approvals
        self.autonomy = dict(autonomy)
        self.protected = tuple(protected)
        self._worktrees: dict[str, str] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self._llm_records: queue.Queue[Entry | None] = queue.Queue()
        self._llm_writer: threading.Thread | None = None
        self._audit_failure: BaseException | None = None

    # -- context of an agent ------------------------------------------------------------

    def _context(self, agent: str, trial: int = 0) -> dict[str, Any]:
        worktree = self._worktrees.get(agent)
        if worktree is None:
            found = {a.name: a.worktree for a in self.store.agents(self.run_id)}
            with self._lock:
                self._worktrees.update(found)
            worktree = found.get(agent, "")
        return {
            "agent": agent,
            "worktree": worktree,
            "autonomy": self.autonomy.get(agent, "embedded"),
            "trial": trial,
            "protected": self.protected,
        }

    # -- deciding ----------------------------------------------------------------------

    def decide(self, action: Action, correlation: str | None) -> Decision:
        """Judge and record one action; raises when the record cannot be written (the
        callers deny then)."""
        decision = self.policy.decide(action)
        with _tracer.start_as_current_span("overnight.decision") as span:
            span.set_attribute("overnight.agent", action.agent)
            span.set_attribute("overnight.action.kind", action.kind.value)
            span.set_attribute("overnight.policy.id", ",".join(decision.rule_ids))
            span.set_attribute("overnight.policy.version", decision.policy_version)
            span.set_attribute("overnight.risk.score", decision.risk)
            span.set_attribute("overnight.decision", decision.effect.value)
            if correlation:
                span.set_attribute("overnight.correlation", correlation)
        self.auditor.append(
            "decision", action.agent, action.summary(), _record(action, decision), correlation
        )
        return decision

    def _verdict(
        self,
        actions: Sequence[Action],
        correlation: str | None,
        what: str,
        concern: str | None = None,
    ) -> Verdict:
        """One verdict for actions judged together (a trial's edits): the strictest. With a
        `concern` of the lab's own, what policy allows goes to a human too."""
        try:
            decisions = [self.decide(a, correlation) for a in actions]
        except Exception as exc:  # fail closed: unrecorded means not allowed
            log.exception("governance could not judge %s", what)
            return Verdict(Effect.deny, f"governance could not record its decision ({exc})")
        effect = strictest(d.effect for d in decisions)
        reason = "; ".join(dict.fromkeys(d.reason for d in decisions if d.effect is effect))
        if concern is not None and effect is not Effect.deny:
            reason = concern if effect is Effect.allow else f"{concern}; {reason}"
            effect = Effect.review
        if effect is not Effect.review:
            return Verdict(effect, reason)
        first = actions[0]
        subject: dict[str, Any] = first.to_dict() if len(actions) == 1 else {
            "kind": first.kind.value, "agent": first.agent, "trial": first.trial,
            "paths": [a.path for a in actions],
        }  # fmt: skip
        risk = max(d.risk for d in decisions)
        approval = self.approvals.request(
            self.run_id, first.agent, _trim(subject), reason, risk=risk, correlation=correlation
        )
        return Verdict(Effect.review, reason, approval.id)

    def _settle(self, verdict: Verdict, stop: threading.Event) -> str | None:
        """Block on a review until a human answers; None to go on, else why not."""
        if verdict.effect is Effect.allow:
            return None
        if verdict.effect is Effect.deny or verdict.approval is None:
            return verdict.reason
        answered = self.approvals.wait(verdict.approval, stop)
        if answered.status == "approved":
            return None
        if answered.status == "pending":
            return f"stopped while approval {answered.id} was pending"
        note = f": {answered.note}" if answered.note else ""
        return f"approval {answered.id} {answered.status}{note} ({verdict.reason})"

    # -- the lab's Judge (built-in agents, in this process) -----------------------------

    def approve_edits(
        self, agent: str, trial: Trial, paths: Sequence[str], stop: threading.Event
    ) -> str | None:
        return self._settle(self.edits(agent, trial.number, paths), stop)

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
        return self._settle(self.keep(agent, trial.number, metric, gain, concern), stop)

    def edits(self, agent: str, trial: int, paths: Sequence[str]) -> Verdict:
        context = self._context(agent, trial)
        actions = [Action.edit(p, **context) for p in paths] or [Action.edit("", **context)]
        return self._verdict(actions, correlation_id(self.run_id, trial), f"trial {trial}")

    def keep(
        self, agent: str, trial: int, metric: float, gain: float, concern: str | None = None
    ) -> Verdict:
        action = Action.keep(metric, gain, **self._context(agent, trial))
        correlation = correlation_id(self.run_id, trial)
        return self._verdict([action], correlation, f"trial {trial}", concern)

    # -- agents in their own processes (served by the gateway) --------------------------

    def hook(self, agent: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A Claude Code PreToolUse hook's question; the reply the hook script reads."""
        try:
            action = Action.from_hook(payload, **_hook_context(self._context(agent)))
        except ValueError as exc:
            return Verdict(Effect.deny, f"the tool call cannot be judged: {exc}").to_dict()
        tool_use = payload.get("tool_use_id")
        correlation = f"{self.run_id}:{agent}:{tool_use}" if tool_use else None
        verdict = self._verdict([action], correlation, action.summary())
        if verdict.approval is not None:
            self._wait_state(agent, verdict)
        return verdict.to_dict()

    def judge(self, agent: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """`overnight try` in an agent's process asks about its trial: {"check": "edits",
        "trial": N, "paths": [...]} or {"check": "keep", "trial": N, "metric": M,
        "gain": G}. The agent is who the key says, whatever the request claims."""
        check, trial = request.get("check"), request.get("trial")
        if not isinstance(trial, int):
            raise ValueError("`trial` must be the trial's number")
        if check == "edits":
            paths = request.get("paths")
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ValueError("`paths` must be a list of the paths the trial changed")
            verdict = self.edits(agent, trial, paths)
        elif check == "keep":
            metric, gain = request.get("metric"), request.get("gain")
            if not isinstance(metric, int | float) or not isinstance(gain, int | float):
                raise ValueError("`metric` and `gain` must be numbers")
            concern = request.get("concern")
            if concern is not None and not isinstance(concern, str):
                raise ValueError("`concern` must be a string")
            verdict = self.keep(agent, trial, float(metric), float(gain), concern)
        else:
            raise ValueError(f"`check` must be edits or keep, not {check!r}")
        if verdict.approval is not None:
            self._wait_state(agent, verdict)
        return verdict.to_dict()

    def approval(self, agent: str, approval_id: str) -> dict[str, Any] | None:
        """How an approval of `agent` stands (None when it has no such approval)."""
        found = self.approvals.get(approval_id)
        if found is None or found.agent != agent or found.run_id != self.run_id:
            return None
        if found.status != "pending":
            with self._lock:
                waiting = found.id in self._waiting
                self._waiting.discard(found.id)
            if waiting:
                self.store.set_agent_state(
                    self.run_id, agent, "working", approval=found.id, answer=found.status
                )
        return {"id": found.id, "status": found.status, "note": found.note}

    def _wait_state(self, agent: str, verdict: Verdict) -> None:
        assert verdict.approval is not None
        with self._lock:
            self._waiting.add(verdict.approval)
        self.store.set_agent_state(
            self.run_id, agent, "waiting", approval=verdict.approval, reason=verdict.reason
        )

    # -- LLM requests at the gateway ----------------------------------------------------

    def llm(self, agent: str, model: str, est_cost_usd: float, trial: int | None) -> Verdict:
        """Judge an LLM request on the gateway's event loop: the decision takes tens of
        microseconds; its audit record is written by a background thread, and once that
        thread has failed every request is denied. A review cannot hold an LLM request
        for a human, so it is refused with the reason."""
        if self._audit_failure is not None:
            return Verdict(
                Effect.deny, f"the audit trail cannot be written ({self._audit_failure})"
            )
        action = Action.llm(model, est_cost_usd, **self._context(agent, trial or 0))
        decision = self.policy.decide(action)
        correlation = correlation_id(self.run_id, trial) if trial else None
        self._start_llm_writer()
        self._llm_records.put(
            Entry("decision", agent, action.summary(), _record(action, decision), correlation)
        )
        if decision.effect is Effect.allow:
            return Verdict(Effect.allow, decision.reason)
        why = decision.reason
        if decision.effect is Effect.review:
            why = f"{why} (needs a human's review, which an LLM request cannot wait for)"
        return Verdict(Effect.deny, why)

    def _start_llm_writer(self) -> None:
        if self._llm_writer is None:
            with self._lock:
                if self._llm_writer is None:
                    self._llm_writer = threading.Thread(
                        target=self._write_llm_records, name="overnight-llm-audit", daemon=True
                    )
                    self._llm_writer.start()

    def _write_llm_records(self) -> None:
        while True:
            entry = self._llm_records.get()
            batch = [] if entry is None else [entry]
            while not self._llm_records.empty() and len(batch) < 500:
                more = self._llm_records.get_nowait()
                if more is None:
                    entry = None
                    break
                batch.append(more)
            try:
                if batch:
                    self.auditor.append_many(batch)
            except Exception as exc:
                log.exception("the audit trail cannot be written")
                self._audit_failure = exc
            if entry is None:
                return

    def close(self) -> None:
        """Write what is queued, stop the writer (the auditor and approvals are closed by
        whoever made them)."""
        if self._llm_writer is not None:
            self._llm_records.put(None)
            self._llm_writer.join()
            self._llm_writer = None


def _hook_context(context: dict[str, Any]) -> dict[str, Any]:
    return {k: context[k] for k in ("agent", "worktree", "autonomy", "protected")}


def _record(action: Action, decision: Decision) -> dict[str, Any]:
    return {"action": _trim(action.to_dict()), **decision.to_dict()}


def _trim(value: Any) -> Any:
    """The value with long strings cut: a record says what was decided, not the file."""
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + f"... [{len(value) - _MAX_TEXT} more characters]"
    if isinstance(value, Mapping):
        return {k: _trim(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_trim(v) for v in value]
    return value
