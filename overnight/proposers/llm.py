"""The `llm` runtime: each trial, ask a model through the lab's gateway for one change.

Every trial the model gets `program.md`, the lab's rules (metric, goal, editable
and protected globs), the lab notebook (`overnight.lab.notebook`: every agent's
finished trials, discarded and crashed ones included, with deltas against the
best and the baseline, so it does not repeat itself or the others) and the
editable files as they stand at the agent's best commit. It answers in this format:

    DESCRIPTION: <one line saying what changed and why>
    path/relative/to/lab.py
    <<<<<<< SEARCH
    exact existing lines
    =======
    replacement lines
    >>>>>>> REPLACE

with as many blocks as it needs (an empty SEARCH on a file that does not exist
creates it; ``` fences and prose around the blocks are fine). A reply that
cannot be used (no DESCRIPTION, a broken block, a file that is not editable, a
SEARCH that is not found or found more than once) is answered in the same
conversation with the precise problems, at most `MAX_REASKS` times; then the
trial is `crashed` with every raw reply kept in its proposal.

The call is one non-streaming `POST /v1/chat/completions` to the gateway with
the agent's virtual key and an `x-overnight-trial` header, so every token is
metered against the agent and the trial. When the gateway says the route is
down (503/529: every candidate failed, a brownout), rate-limited (429) or the
budget is spent (402), the proposer raises `ProposerUnavailable`: not the
agent's fault. Standard library HTTP only; the gateway is on loopback.

Knows nothing about git, the runner or the store's tables: it reads trials
through the Store API and leaves applying, checking and running to the lab.
"""

from __future__ import annotations

import http.client
import json
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.propagate import inject

from overnight.lab import notebook
from overnight.lab.proposal import Proposal, ProposalError, ProposerUnavailable
from overnight.org.config import Goal
from overnight.proposers import edits as edit_blocks
from overnight.proposers.base import ProposerSetup
from overnight.proposers.edits import Edit, EditError
from overnight.proposers.runtime import ProposerRuntime, Register
from overnight.records import Trial, TrialStatus
from overnight.store import Store, open_store

MAX_REASKS = 2
"""How many times a malformed or inapplicable reply is answered with its problems."""
MAX_TOKENS = 8192
"""The most a reply may generate (the gateway reserves budget for it)."""
MAX_FILE_CHARS = 24_000
"""Characters of one editable file shown to the model; the rest is cut, and it is told so."""
MAX_FILES_CHARS = 80_000
"""Characters of all editable files together; files past it are named but not shown."""
LOG_LINES = 12
"""Last lines of the agent's latest crash shown, so it can fix its own mistake."""
_TIMEOUT_MARGIN_S = 60.0
"""Our socket waits this much longer than the gateway's own first-byte timeout, so the
gateway's explicit error arrives first."""
_S = TrialStatus


class LlmProposer:
    """One agent's proposer. Not shared between threads (one agent, one thread)."""

    def __init__(self, setup: ProposerSetup) -> None:
        config = setup.config
        agent = dict(config.agent_names()).get(setup.agent)
        if agent is None or agent.model is None:
            raise RuntimeError(
                f"the llm runtime was built for agent {setup.agent!r}, which has no model route"
            )
        if setup.gateway_url is None or setup.key_file is None:
            raise RuntimeError(
                f"the llm runtime of agent {setup.agent!r} was built without the lab's gateway"
            )
        self.agent = setup.agent
        self.model = agent.model
        self.lab = config.lab
        self.program = setup.program
        self.run_id = setup.run_id
        self.store_url = setup.store_url
        self.key_file = setup.key_file
        self.gateway_url = str(setup.gateway_url).rstrip("/")
        parts = urlsplit(self.gateway_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = parts.path.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        first_byte = config.gateway.timeouts.first_byte if config.gateway else 300.0
        self.timeout = first_byte + _TIMEOUT_MARGIN_S
        self._store: Store | None = None
        self._requeued: deque[Trial] = deque()
        self._queued: set[int] = set()

    # --- the Proposer protocol ----------------------------------------------------------

    def propose(self, worktree: Path, trial: Trial) -> Proposal:
        if self._requeued:
            again = self._requeued.popleft()
            edits = [Edit.from_json(e) for e in again.proposal["edits"]]
            return self._proposal(again.description, edits, 0, requeued_from=again.number)
        messages: list[dict[str, str]] = [
            {"role": "system", "content": self._system()},
            {"role": "user", "content": self._prompt(worktree, trial)},
        ]
        replies: list[str] = []
        problems: list[list[str]] = []
        for _ in range(MAX_REASKS + 1):
            try:
                reply, finish = self._ask(messages, trial)
            except ProposalError as exc:
                data = {**exc.data, **self._failed(replies, problems)}
                raise ProposalError(str(exc), data) from None
            replies.append(reply)
            try:
                description, edits = edit_blocks.parse(reply)
                edit_blocks.apply(worktree, edits, self.lab.editable, self.lab.protected)
            except EditError as exc:
                found = list(exc.problems)
                if finish == "length":
                    found.append(
                        f"your reply was cut off at the output limit ({MAX_TOKENS} tokens); "
                        "make the change smaller"
                    )
                problems.append(found)
                messages.append({"role": "assistant", "content": reply})
                messages.append({"role": "user", "content": _feedback(found)})
                continue
            return self._proposal(description, edits, len(replies))
        last = "; ".join(problems[-1])
        raise ProposalError(
            f"no usable reply in {len(replies)} tries; the last: {last}",
            self._failed(replies, problems),
        )

    def observe(self, trial: Trial) -> None:
        """Nothing to learn here: the history is read from the store on every proposal."""

    def resume(self, finished: Sequence[Trial], requeue: Sequence[Trial]) -> None:
        """Re-queue interrupted trials' edits, proposed again (once each) before asking."""
        for trial in requeue:
            edits = trial.proposal.get("edits")
            if isinstance(edits, list) and edits and trial.number not in self._queued:
                self._queued.add(trial.number)
                self._requeued.append(trial)

    def baseline(self, trial: Trial, worktree: Path) -> None:
        """Nothing to do: the baseline is in the store's history."""

    def adopted(self, worktree: Path, best: Trial) -> None:
        """Nothing to do: every proposal reads the files at the agent's best commit, which
        is the adopted one now."""

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- the proposal -------------------------------------------------------------------

    def _proposal(
        self, description: str, edits: list[Edit], replies: int, requeued_from: int | None = None
    ) -> Proposal:
        editable, protected = list(self.lab.editable), list(self.lab.protected)

        def apply(root: Path) -> None:
            try:
                texts = edit_blocks.apply(root, edits, editable, protected)
            except EditError as exc:
                raise ProposalError(f"the edits no longer apply: {exc}") from None
            edit_blocks.write(root, texts)

        return Proposal(
            description=description,
            data={"edits": [e.to_json() for e in edits], "model": self.model, "replies": replies},
            apply=apply,
            requeued_from=requeued_from,
        )

    def _failed(self, replies: list[str], problems: list[list[str]]) -> dict[str, Any]:
        return {"model": self.model, "replies": list(replies), "problems": problems}

    # --- the gateway --------------------------------------------------------------------

    def _ask(self, messages: list[dict[str, str]], trial: Trial) -> tuple[str, str | None]:
        """The model's reply text and finish reason."""
        body = json.dumps(
            {"model": self.model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": False}
        ).encode()
        headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {self.key_file.read_text().strip()}",
            "x-overnight-trial": str(trial.number),
        }
        inject(headers)  # the gateway's spans join the trial's trace (W3C traceparent)
        connection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
            if self._https
            else http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        )
        try:
            connection.request("POST", self._path, body, headers)
            response = connection.getresponse()
            raw = response.read()
            status, retry_after = response.status, response.getheader("retry-after")
        except (OSError, http.client.HTTPException) as exc:
            raise ProposerUnavailable(
                f"the gateway at {self.gateway_url} did not answer: {exc or type(exc).__name__}"
            ) from None
        finally:
            connection.close()
        if status != 200:
            raise self._refusal(status, raw, retry_after)
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            content = choice["message"].get("content")
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return raw.decode("utf-8", "replace"), None
        if isinstance(content, list):  # some servers answer in parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return (content if isinstance(content, str) else ""), (
            finish if isinstance(finish, str) else None
        )

    def _refusal(self, status: int, raw: bytes, retry_after: str | None) -> Exception:
        message = _error_message(raw)
        wait = _seconds(retry_after)
        route = f"model route {self.model!r}"
        if status == 402:
            return ProposerUnavailable(f"{self.agent}'s LLM budget is spent: {message}")
        if status in (503, 529):
            return ProposerUnavailable(
                f"{route} is down: {message}", brownout=True, retry_after=wait
            )
        if status == 429:
            return ProposerUnavailable(f"{route} is rate-limited: {message}", retry_after=wait)
        if status >= 500:
            return ProposerUnavailable(
                f"{route} failed (HTTP {status}): {message}", retry_after=wait
            )
        if status in (401, 403, 404):
            # our wiring (the agent's key, the route preflight checked), never the model's
            return RuntimeError(
                f"the gateway refused agent {self.agent!r} (HTTP {status}): {message}"
            )
        # e.g. a prompt the upstream will not take: recorded on the trial, the loop goes on
        return ProposalError(
            f"the gateway refused the request (HTTP {status}): {message}",
            {"status": status, "error": message},
        )

    # --- the prompt ---------------------------------------------------------------------

    def _system(self) -> str:
        lab = self.lab
        goal = "lower is better" if lab.goal is Goal.minimize else "higher is better"
        protected = (
            f" Protected files ({', '.join(lab.protected)}) must never change."
            if lab.protected
            else ""
        )
        return (
            f"You are {self.agent}, an agent in an autonomous research lab. Each turn you "
            "propose ONE focused change to the lab's editable files. The lab applies it, runs "
            f"`{lab.run}`, reads the `{lab.metric}: <number>` line of its output ({goal}), and "
            "keeps the change only if it beats the best so far; otherwise it is discarded. "
            "Learn from the history: do not repeat an idea that was discarded or crashed.\n\n"
            "Answer in exactly this format:\n\n"
            f"{edit_blocks.FORMAT}\n\n"
            "Rules:\n"
            "- SEARCH copies existing lines of the file exactly (indentation, comments and "
            "blank lines included) and must match exactly once; add surrounding lines to make "
            "it unique.\n"
            "- Use one block per place; several blocks and files are fine, applied in order.\n"
            "- To create a new file, give its path and leave SEARCH empty.\n"
            f"- Only files matching {', '.join(lab.editable)} may change.{protected}\n"
            f"- A run must finish within {lab.budget:g} seconds."
        )

    def _prompt(self, worktree: Path, trial: Trial) -> str:
        parts = []
        if self.program.strip():
            parts.append(f"# Program ({self.lab.program})\n\n{self.program.strip()}")
        parts.append(f"# The lab notebook: this run so far\n\n{self._history(trial)}")
        parts.append(
            f"# Editable files, as they are at your best commit\n\n{self._files(worktree)}"
        )
        parts.append(f"This is trial #{trial.number}. Propose your next change.")
        return "\n\n".join(parts) + "\n"

    def _history(self, current: Trial) -> str:
        if self._store is None:
            self._store = open_store(self.store_url)
        trials = self._store.trials(self.run_id)
        return history(trials, current.number, self.agent, self.lab.metric, self.lab.goal)

    def _files(self, worktree: Path) -> str:
        shown: list[str] = []
        left = MAX_FILES_CHARS
        skipped: list[str] = []
        for rel in edit_blocks.editable_files(worktree, self.lab.editable):
            data = (worktree / rel).read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                shown.append(f"## {rel}\n\n(not shown: not a UTF-8 text file, {len(data)} bytes)")
                continue
            if left <= 0:
                skipped.append(f"{rel} ({len(text)} characters)")
                continue
            cap = min(MAX_FILE_CHARS, left)
            body, note = text, ""
            if len(text) > cap:
                cut = text.rfind("\n", 0, cap) + 1 or cap
                body = text[:cut]
                note = (
                    f"\n[truncated: showing the first {cut} of {len(text)} characters; "
                    "SEARCH only lines shown here]"
                )
            left -= len(body)
            fence = "`" * max(3, _longest_backtick_run(body) + 1)
            body = body if body.endswith("\n") or not body else body + "\n"
            shown.append(f"## {rel}\n\n{fence}\n{body}{fence}{note}")
        if skipped:
            shown.append("Not shown (the prompt's size limit), but editable: " + ", ".join(skipped))
        return "\n\n".join(shown) if shown else "(no editable file exists yet)"


def history(trials: Sequence[Trial], current: int, agent: str, metric: str, goal: Goal) -> str:
    """The run so far: the lab notebook (every agent's trials, kept, discarded and crashed
    alike), then the last lines of the agent's own latest crash, so it can fix its mistake."""
    out = [notebook.render(trials, metric, goal, reader=agent, exclude=current)]
    mine = [t for t in trials if t.agent == agent and t.status.final and t.number != current]
    if mine and mine[-1].status in (_S.crashed, _S.timed_out) and mine[-1].log_tail:
        tail = mine[-1].log_tail.rstrip().splitlines()[-LOG_LINES:]
        out.append("")
        out.append(f"the last lines of your trial #{mine[-1].number}'s log:")
        out.extend("    " + line for line in tail)
    return "\n".join(out)


def _feedback(problems: Sequence[str]) -> str:
    listed = "\n".join(f"- {p}" for p in problems)
    return (
        "Your reply could not be used, and none of it was applied:\n"
        f"{listed}\n\n"
        "Reply again with the whole answer in the same format: the DESCRIPTION line, then "
        "every edit block."
    )


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace").strip() or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return raw[:300].decode("utf-8", "replace")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def register_runtimes(register: Register) -> None:
    register(ProposerRuntime("llm", LlmProposer, llm=True))
