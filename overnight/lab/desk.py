"""The trial desk: trials an agent's own process submits, run by the command center.

An agent's CLI works in a sandbox where the lab's store, keys and state are absent,
so its `overnight try` cannot record a trial itself. It hands the desk a
description over the gateway's `/overnight/v1/trials` (authenticated by the
agent's virtual key, which says whose worktree it is), and the command center —
which holds the store, the judge and the walls for experiments — runs the trial
from that worktree as it stands, exactly as it runs a built-in agent's. The
client then asks for the result until the trial is final; stopping the client
stops the trial. `overnight notes` reads the lab notebook the same way
(`/overnight/v1/notes`).
When the trial leaves the agent far enough behind the lab's best, the desk moves
it there (`overnight.lab.sharing`) before it answers, while the agent waits for
`overnight try`: its worktree was just reset, nothing of its own is in it.

Owns both sides: `TrialDesk` (in the command center) and `DeskClient` (in
`overnight try`). Knows nothing about HTTP serving (the gateway does that) or
the terminal.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight import bearer
from overnight.errors import UserError
from overnight.lab import notebook
from overnight.lab.git import worktree_of
from overnight.lab.lock import holder
from overnight.lab.sharing import Sharing
from overnight.paths import StateDir
from overnight.records import Trial

if TYPE_CHECKING:
    from overnight.lab.lab import Lab

URL_ENV = "OVERNIGHT_URL"
KEY_ENV = "OVERNIGHT_KEY"
"""Set for an agent's CLI: where its desk is, and the key that says whose trials they are."""
MAX_WAIT_S = 20.0
"""The longest one `GET trials/N?wait=` holds the connection before answering."""
log = logging.getLogger("overnight.desk")


@dataclass
class _Desked:
    agent: str
    stop: threading.Event
    done: threading.Event
    box: dict[str, Any] = field(default_factory=dict)


class TrialDesk:
    """Runs submitted trials in threads of the command center, one per agent at a time
    (the lab's agent lock says so)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._lock = threading.Lock()
        self._trials: dict[int, _Desked] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.sharing = Sharing(lab)

    def submit(self, agent: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Start a trial of the agent's worktree; answers once it is numbered."""
        description = request.get("description")
        if not isinstance(description, str):
            raise ValueError('the body needs "description": a string')
        if self._closed:
            raise UserError("the lab is stopping.\n  fix: submit again once `overnight run` runs.")
        entry = _Desked(agent, threading.Event(), threading.Event())
        entry.box["best_before"] = self.lab.agent(agent).best_metric
        numbered = threading.Event()

        def on_trial(trial: Trial) -> None:
            entry.box["number"] = trial.number
            with self._lock:
                self._trials[trial.number] = entry
            numbered.set()

        def work() -> None:
            try:
                self.lab.try_worktree(agent, description, entry.stop, on_trial=on_trial)
                adoption = self.sharing.consider(agent)
                if adoption is not None:
                    entry.box["adopted"] = adoption.message(self.lab.config.lab.metric)
            except UserError as exc:
                entry.box["error"] = str(exc)
            except Exception as exc:  # the lab recorded the trial as interrupted
                log.exception("a trial submitted by %s failed", agent)
                entry.box["error"] = f"overnight error: {exc}"
            finally:
                numbered.set()
                entry.done.set()

        thread = threading.Thread(target=work, name=f"desk-{agent}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        numbered.wait()
        if "number" not in entry.box:
            raise UserError(entry.box.get("error", "the trial did not start"))
        return {"trial": entry.box["number"], "run": self.lab.config.lab.run}

    def trial(self, agent: str, number: int, wait: float) -> dict[str, Any] | None:
        """The trial as it stands, after waiting up to `wait` seconds for it to end."""
        with self._lock:
            entry = self._trials.get(number)
        if entry is not None and entry.agent == agent:
            entry.done.wait(max(0.0, min(wait, MAX_WAIT_S)))
        found = next(
            (t for t in self.lab.store.trials(self.lab.run.id, agent=agent) if t.number == number),
            None,
        )
        if found is None:
            return None
        lab = self.lab.config.lab
        answer = {
            **trial_json(found),
            "metric_name": lab.metric,
            "goal": lab.goal.value,
            "best_before": entry.box.get("best_before") if entry else None,
            "adopted": entry.box.get("adopted") if entry else None,
        }
        if entry is not None and not entry.done.is_set():
            answer["final"] = False  # the desk's part (a move to the lab's best) is not over
        return answer

    def notes(self, agent: str) -> dict[str, Any]:
        """The lab notebook, for `overnight notes` in an agent's sandbox."""
        return {"notes": notebook.read(self.lab.store, self.lab.run.id, self.lab.config.lab, agent)}

    def stop(self, agent: str, number: int) -> bool:
        with self._lock:
            entry = self._trials.get(number)
        if entry is None or entry.agent != agent:
            return False
        entry.stop.set()
        return True

    def close(self, wait: float = 30.0) -> None:
        """Stop every trial in flight (recorded `interrupted`) and wait for them to end."""
        self._closed = True
        with self._lock:
            entries, threads = list(self._trials.values()), list(self._threads)
        for entry in entries:
            entry.stop.set()
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def desk_address(path: Path) -> tuple[str, str] | None:
    """Where `overnight try` run at `path` should send its trial: the desk of the agent's
    CLI (from its environment), or of the `overnight run` holding the lab of the agent's
    worktree at `path`; None when no command center runs it (the caller runs the trial)."""
    url, key = os.environ.get(URL_ENV), os.environ.get(KEY_ENV)
    if url and key:
        return url, key
    try:
        root, _run, agent = worktree_of(path)
    except UserError:
        return None
    state = StateDir.of(root)
    try:
        url = state.gateway_url.read_text().strip()
        key = state.key(agent).read_text().strip()
    except OSError:
        return None
    return (url, key) if holder(root) is not None else None


def trial_json(trial: Trial) -> dict[str, Any]:
    """What `overnight try` prints about a trial."""
    return {
        "trial": trial.number,
        "agent": trial.agent,
        "status": trial.status.value,
        "final": trial.status.final,
        "description": trial.description,
        "metric": trial.metric,
        "reason": trial.reason,
        "candidate_commit": trial.candidate_commit,
        "log_tail": trial.log_tail,
        "log_path": trial.log_path,
    }


class DeskClient:
    """`overnight try`'s side: submit, then wait for the result."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def submit(self, description: str) -> tuple[int, str]:
        """The new trial's number and the command it runs."""
        data = self._call("POST", "/overnight/v1/trials", {"description": description})
        return int(data["trial"]), str(data.get("run", ""))

    def wait(
        self, number: int, on_wait: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        while True:
            data = self._call("GET", f"/overnight/v1/trials/{number}?wait={MAX_WAIT_S:g}", None)
            if data.get("final"):
                return data
            if on_wait is not None:
                on_wait(data)

    def stop(self, number: int) -> None:
        self._call("POST", f"/overnight/v1/trials/{number}/stop", {})

    def notes(self) -> str:
        """The lab notebook, as the command center renders it for this agent."""
        return str(self._call("GET", "/overnight/v1/notes", None)["notes"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            answer = bearer.call(self.url, self.key, method, path, body, MAX_WAIT_S + 30)
        except OSError as exc:
            raise UserError(
                f"the command center does not answer at {self.url} ({exc}).\n"
                "  fix: is `overnight run` running? Start it, then try again."
            ) from None
        raw, data = answer.raw, answer.json()
        if answer.status == 409 and isinstance(data, dict):
            raise UserError(str(data.get("error")))
        if answer.status != 200 or not isinstance(data, dict):
            raise UserError(
                f"the command center answered {method} {path} with {answer.status}: "
                f"{raw[:300]!r}.\n  fix: check `overnight status`; this is overnight's bug if "
                "the lab is running."
            )
        return data
