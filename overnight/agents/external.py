"""The process of one external CLI agent (`overnight agent WORKTREE`), run in a terminal session.

It drives the agent's CLI (Claude Code, Codex, aider) turn by turn in the agent's
worktree and records the agent's state exactly at each boundary: *working* while a
turn runs, *idle* between turns, *waiting* while a rate limit or a failed turn
backs off. An agent idle longer than its `idle_after` is nudged (recorded as an
`agent.nudged` event) and goes on in the same conversation. The conversation id
is stored, so a restarted process resumes the conversation instead of starting
over. The gateway's address is read from the lab's state directory before every
turn, so an agent that outlived a restart of `overnight run` follows the new one.

The agents learn from each other through the lab notebook: every conversation
opens with a *brief* (the rules and program.md in the CLI's instructions; the
notebook and the agent's best diff against the run's start in its first
message), and every later turn's message ends with the other agents' results
since the previous turn. A conversation ends after `fresh_every` of the agent's
trials, or when the CLI reports its context nearly full; the next turn starts a
new one from a fresh brief (an `agent.refreshed` event says why, with both
conversation ids), so a long night does not end in context rot.

Between turns, with no work of its own in its worktree, an agent that trailed the
lab's best long enough moves there (`overnight.lab.sharing`; the command center does
the same at its `overnight try`), and the next turn's message says so, whichever
process moved it.

Knows nothing about the supervisor or the web page; it is what runs in the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from overnight import globs, redaction
from overnight.agents.brownout import PROBE_EVERY_S
from overnight.agents.pause import PAUSE_FILE, ends_turn, why_paused
from overnight.agents.runtimes import TurnContext, cli, instructions, key_of
from overnight.errors import UserError
from overnight.lab import notebook, sandbox
from overnight.lab.desk import KEY_ENV, URL_ENV
from overnight.lab.git import Git
from overnight.lab.lab import Lab
from overnight.lab.privacy import user_umask
from overnight.lab.sandbox import Walls
from overnight.lab.sharing import Sharing
from overnight.markers import AGENT_MARKER, RUN_MARKER, SESSION_MARKER, run_mark

FIRST_PROMPT = (
    "Start now: read the editable files, choose your first experiment, make the change and "
    'submit it with `overnight try "<what you changed>"`. Then keep going.'
)
REFRESHED = (
    "This is a fresh conversation: overnight ended your previous one ({why}) so that your "
    "context stays clear. What you need is here: the lab's rules and program in your "
    "instructions, and below the lab notebook (every agent's trials so far) and your best "
    "change. Your worktree is at your best commit (`git status` shows any change you had "
    "not submitted yet)."
)
GO_ON = (
    "Go on: choose your next experiment (not one the notebook shows was discarded or "
    "crashed), make the change and submit it as your instructions say. Then keep going."
)
CONTEXT_FULL = 0.8
"""The share of the model's context window past which a conversation ends after its turn
(before the CLIs' own compaction, which summarizes what the brief would say exactly)."""
MAX_BRIEF_DIFF = 12_000
"""Characters of the agent's best diff in a brief; the agent can read the rest with git."""
MEMORY_FILE = "conversation.json"
"""In the agent's home: its conversation's id, the trials it had when it began, and the
trials of the notebook it has been told of (so a restarted process goes on telling news)."""
RESUME_PROMPT = (
    "overnight restarted you; your conversation is intact. Continue the research where you "
    "left off (check `git status`: an unsubmitted change may be waiting for `overnight try`)."
)
STOPPED = (
    "overnight stopped your previous turn ({why}). A person has looked and resumed you; "
    "your conversation is intact. Do not go on repeating what you were doing: "
    "check `git status`, then choose your next experiment and submit it with `overnight try`."
)
MAX_BACKOFF_S = 300.0
WATCH_TURN_S = 0.1
"""How often a running turn looks for a pause that ends it (a stat of one file)."""


@dataclass(frozen=True)
class Refresh:
    """Why a conversation ends: `reason` for the record, `why` for the agent."""

    reason: str
    why: str
    trials: int
    context: tuple[int, int] | None


def gateway_url(lab: Lab) -> str:
    path = lab.paths.gateway_url
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise UserError(
            f"{path} is missing: the lab's gateway is not running.\n"
            f"  fix: start the lab with `overnight run {lab.org.root}`."
        ) from None


class ExternalAgent:
    """One agent's turns, until `stop` is set."""

    def __init__(self, lab: Lab, name: str, write: Callable[[str], None]) -> None:
        self.lab = lab
        self.name = name
        self.write = write
        self.stop = threading.Event()
        self.config = dict(lab.config.agent_names())[name]
        self.runtime = cli(self.config.runtime)
        self.home = lab.paths.agent_home(lab.run.id, name)
        self.home.mkdir(parents=True, exist_ok=True)
        self._child: subprocess.Popen[str] | None = None
        self.stopped_for: str | None = None
        """Why a pause ended the latest turn (overnight.agents.pause), if one did."""
        self.turns = 0
        self.description: str | None = None
        self.told: set[int] = set()
        """The finished trials this conversation has been told of (brief and news)."""
        self.trials_at_start = 0
        """The agent's finished trials when this conversation began."""
        self.context: tuple[int, int] | None = None
        """(tokens used, window) after the latest turn, when the CLI said."""
        self._hearing: set[int] = set()
        self._refreshed: tuple[Refresh, str | None] | None = None
        self.sharing = Sharing(lab)
        moved = self.sharing.latest(name)
        self.heard_move = moved.event if moved is not None else 0
        """The last move to the lab's best the agent has heard of (those before this process
        began: from `overnight try`, or a conversation that began after them)."""

    def _state(self, state: str, **detail: object) -> None:
        self.lab.store.set_agent_state(self.lab.run.id, self.name, state, **detail)

    def _context(self) -> TurnContext:
        cfg = self.lab.config
        assert self.config.model is not None
        worktree = Git(Path(self.lab.agent(self.name).worktree))
        files = tuple(
            path
            for path in worktree.run("ls-files", "-z").split("\0")
            if path and globs.matches(path, cfg.lab.editable)
        )
        return TurnContext(
            agent=self.name,
            worktree=worktree.path,
            home=self.home,
            gateway_url=gateway_url(self.lab),
            key=key_of(self.lab.paths.key(self.name)),
            model=self.config.model,
            instructions=instructions(
                self.lab.org.program,
                self.name,
                cfg.lab.editable,
                cfg.lab.metric,
                cfg.lab.goal,
                submits=self.runtime.submits,
            ),
            files=files,
            autonomy=str(self.config.autonomy),
            approval_wait=cfg.governance.approval_timeout,
            command_timeout=(cfg.lab.budget + cfg.lab.grace) * (cfg.lab.confirm_runs + 1)
            + cfg.governance.approval_timeout
            + 600,
            sandboxed=self.lab.enclosure.sandboxed,
        )

    def run(self) -> None:
        missing = self.runtime.missing()
        if missing is not None:
            raise UserError(missing)
        record = self.lab.agent(self.name)
        session = record.session
        self._recall(session)
        prompt = RESUME_PROMPT
        refresh: Refresh | None = None
        backoff = 5.0
        while not self.stop.is_set():
            if self._wait_while_paused():
                prompt = RESUME_PROMPT
            if self.stop.is_set():
                break
            # a move to the lab's best comes first, so a new conversation's brief starts
            # where the agent now stands; a later turn hears of it and the others' news
            prompt = self._share(prompt)
            prompt = self._brief(refresh) if session is None else self._with_news(prompt)
            ok, retry_at = self._turn(prompt, session)
            session = self.lab.agent(self.name).session
            if self.stop.is_set():
                break
            if self.stopped_for is not None:  # a pause ended the turn: hold until it is over
                self._wait_while_paused()
                prompt = STOPPED.format(why=self.stopped_for)
                continue
            if not ok:
                until = retry_at if retry_at is not None else time.time() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                self._state("waiting", reason="rate limited" if retry_at else "turn failed",
                            until=until)  # fmt: skip
                self.write(
                    f"[overnight] waiting until {time.strftime('%H:%M:%S', time.localtime(until))}"
                )
                self.stop.wait(max(0.0, until - time.time()))
                prompt = RESUME_PROMPT
                continue
            backoff = 5.0
            self._heard()
            result = self._submit() if self.runtime.submits else None
            refresh = self._due()
            if refresh is not None:  # the next turn opens a new conversation at once
                self._end_conversation(refresh, session)
                session = None
                continue
            if result is not None:  # the next turn hears how its change did
                prompt = f"{result}\n\nContinue with your next experiment."
                continue
            self._state("idle", turn=self.turns)
            if self.stop.wait(self.config.idle_after):
                break
            if self._wait_while_paused():
                prompt = RESUME_PROMPT
                continue
            self.lab.store.append_event(
                self.lab.run.id,
                "agent.nudged",
                {"idle_s": self.config.idle_after, "message": self.config.nudge},
                agent=self.name,
            )
            self.write(f"[overnight] idle for {self.config.idle_after:g}s: nudging")
            prompt = self.config.nudge

    def _share(self, prompt: str) -> str:
        """Before a turn: move to the lab's best if the agent is due and has nothing of its
        own in its worktree (no change, no commit of its own); `prompt`, with news of its
        latest move, if it has not heard of it."""
        record = self.lab.agent(self.name)
        worktree = Git(Path(record.worktree))
        if self.sharing.enabled and not worktree.dirty() and worktree.head() == record.best_commit:
            self.sharing.consider(self.name)
        adoption = self.sharing.latest(self.name, after=self.heard_move)
        if adoption is None:
            return prompt
        self.heard_move = adoption.event
        self.write(f"[overnight] moved to trial {adoption.to_trial}, the lab's best")
        return f"{adoption.message(self.lab.config.lab.metric)}\n\n{prompt}"

    def _wait_while_paused(self) -> bool:
        """Hold while the supervisor's pause file exists (a brownout); True if it did."""
        pause = self.home / PAUSE_FILE
        reason = why_paused(self.home)
        if reason is None:
            return False
        self.write(f"[overnight] paused: {reason}")
        self._state("paused", reason=reason)
        while pause.exists() and not self.stop.wait(PROBE_EVERY_S):
            pass
        self.write("[overnight] resumed")
        return True

    def _turn(self, prompt: str, session: str | None) -> tuple[bool, float | None]:
        """One run of the CLI; (whether it ended well, when a rate limit says to retry)."""
        ctx = self._context()
        argv, new_session = self.runtime.turn(ctx, prompt, session)
        if new_session and new_session != session:
            self._began(new_session)
            session = new_session
        self.turns += 1
        self._state("working", turn=self.turns)
        self.write(f"[overnight] turn {self.turns}: {prompt[:100]}")
        env = self._env(ctx)
        if self.lab.enclosure.sandboxed:
            argv = [*self._walls(ctx, argv[0]).argv(), *argv]
        error: str | None = None
        retry_at: float | None = None
        done = False
        self.description = None
        used: int | None = None
        window: int | None = None
        self.stopped_for = None
        with subprocess.Popen(
            argv,
            cwd=ctx.worktree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            umask=user_umask(),
        ) as child:
            self._child = child
            over = threading.Event()
            watcher = threading.Thread(
                target=self._stop_if_paused, args=(child, over), name="turn-pause", daemon=True
            )
            watcher.start()
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    event = self.runtime.parse(line)
                    for shown in event.show:
                        self.write(shown)
                    if event.session and event.session != session:
                        if session is None:
                            self._began(event.session)  # Codex names its new thread now
                        else:
                            self.lab.store.set_agent_session(
                                self.lab.run.id, self.name, event.session
                            )
                        session = event.session
                    used = event.context_used if event.context_used is not None else used
                    window = event.context_window or window
                    if event.error:
                        error, retry_at = event.error, event.retry_at or retry_at
                    if event.description:
                        self.description = event.description
                    done = done or event.done
            finally:
                over.set()
                watcher.join()
                self._child = None
        code = child.returncode
        if self.stopped_for is not None:
            self.write(f"[overnight] turn {self.turns} stopped: {self.stopped_for}")
            self.lab.store.append_event(
                self.lab.run.id,
                "agent.turn_stopped",
                {"turn": self.turns, "reason": self.stopped_for},
                agent=self.name,
            )
            return False, None
        if used is None or window is None:
            told = self.runtime.context(ctx, session) if session else None
            used, window = told if told is not None else (used, window)
        self.context = (used, window) if used is not None and window else None
        if code != 0 and error is None:
            error = f"{self.runtime.binary} exited with code {code}"
        if error is not None:
            self.lab.store.append_event(
                self.lab.run.id,
                "agent.turn_failed",
                {"turn": self.turns, "error": error, "retry_at": retry_at},
                agent=self.name,
            )
        return error is None, retry_at

    def _stop_if_paused(self, child: subprocess.Popen[str], over: threading.Event) -> None:
        """While a turn runs: a pause that ends turns (a cost anomaly's) stops the CLI."""
        while not over.wait(WATCH_TURN_S):
            reason = why_paused(self.home)
            if ends_turn(reason):
                self.stopped_for = reason
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGTERM)
                return

    # -- the notebook and fresh conversations --------------------------------

    def _finished(self) -> int:
        return sum(
            1 for t in self.lab.store.trials(self.lab.run.id, agent=self.name) if t.status.final
        )

    def _brief(self, refresh: Refresh | None) -> str:
        """The first message of a conversation: the notebook and the agent's best change
        (program.md and the rules are in the CLI's instructions, on every turn)."""
        lab = self.lab
        trials = lab.store.trials(lab.run.id)
        self.told = notebook.finished(trials)
        self._hearing = set()
        self.trials_at_start = sum(1 for t in trials if t.agent == self.name and t.status.final)
        cfg = lab.config.lab
        opening = FIRST_PROMPT if refresh is None else REFRESHED.format(why=refresh.why)
        notes = notebook.render(trials, cfg.metric, cfg.goal, reader=self.name)
        parts = [
            opening,
            f"# The lab notebook (`overnight notes` shows it again)\n\n{notes}",
            f"# Your best change so far\n\n{self._best_diff()}",
        ]
        if refresh is not None:
            parts.append(GO_ON)
        return "\n\n".join(parts)

    def _best_diff(self) -> str:
        """The agent's best commit against the run's start, capped."""
        record = self.lab.agent(self.name)
        base = self.lab.run.base_commit
        if record.best_commit == base:
            return "None yet: your branch is still at the run's start."
        patch, _paths = self.lab.git.diff(base, record.best_commit)
        if not patch.strip():
            return "None: your best commit has the same files as the run's start."
        note = ""
        if len(patch) > MAX_BRIEF_DIFF:
            cut = patch.rfind("\n", 0, MAX_BRIEF_DIFF) + 1 or MAX_BRIEF_DIFF
            note = (
                f"\n[cut: the first {cut} of {len(patch)} characters; "
                f"`git diff {base[:12]}` in your worktree shows it all]"
            )
            patch = patch[:cut]
        metric = self.lab.config.lab.metric
        value = "?" if record.best_metric is None else f"{record.best_metric:.6g}"
        fence = "`" * max(3, max(map(len, re.findall("`+", patch)), default=0) + 1)
        return (
            f"Your best commit ({metric}={value}, trial #{record.best_trial}) against the "
            f"run's start:\n\n{fence}diff\n{patch.rstrip()}\n{fence}{note}"
        )

    def _with_news(self, prompt: str) -> str:
        """The message, then what other agents found since this conversation last heard."""
        lab = self.lab
        trials = lab.store.trials(lab.run.id)
        cfg = lab.config.lab
        fresh = notebook.news(trials, self.told, cfg.metric, cfg.goal, reader=self.name)
        self._hearing = notebook.finished(trials)
        return prompt if fresh is None else f"{prompt}\n\n{fresh}"

    def _heard(self) -> None:
        """A turn went through: what its message said is told."""
        if self._hearing:
            self.told |= self._hearing
            self._hearing = set()
            self._remember(self.lab.agent(self.name).session)

    def _due(self) -> Refresh | None:
        """Whether this conversation has run its course, and why."""
        trials = self._finished() - self.trials_at_start
        every = self.config.fresh_every
        if every and trials >= every:
            return Refresh(
                f"every {every} trials",
                f"after {trials} of your trials in it",
                trials,
                self.context,
            )
        if self.context is not None and self.context[0] >= CONTEXT_FULL * self.context[1]:
            used, window = self.context
            return Refresh(
                "context full",
                f"its context was {used / window:.0%} full: {used} of {window} tokens",
                trials,
                self.context,
            )
        return None

    def _end_conversation(self, refresh: Refresh, session: str | None) -> None:
        """Forget the conversation: the next turn starts a new one (recorded once its id
        is known, in `_began`)."""
        self.lab.store.set_agent_session(self.lab.run.id, self.name, None)
        self._refreshed = (refresh, session)
        self.context = None
        self.write(f"[overnight] a fresh conversation: {refresh.why}")

    def _began(self, session: str) -> None:
        """A new conversation has its id: store it, and record the refresh that led here."""
        self.lab.store.set_agent_session(self.lab.run.id, self.name, session)
        if self._refreshed is not None:
            refresh, old = self._refreshed
            self._refreshed = None
            self.lab.store.append_event(
                self.lab.run.id,
                "agent.refreshed",
                {
                    "reason": refresh.reason,
                    "trials": refresh.trials,
                    "context_used": refresh.context[0] if refresh.context else None,
                    "context_window": refresh.context[1] if refresh.context else None,
                    "old": old,
                    "new": session,
                },
                agent=self.name,
            )
        self._remember(session)

    def _remember(self, session: str | None) -> None:
        memory = {
            "session": session,
            "trials_at_start": self.trials_at_start,
            "told": sorted(self.told),
        }
        path = self.home / MEMORY_FILE
        path.with_suffix(".tmp").write_text(json.dumps(memory))
        path.with_suffix(".tmp").replace(path)

    def _recall(self, session: str | None) -> None:
        """A restarted process goes on with its conversation's memory; without one (none
        written yet) the conversation is taken to begin now, having heard everything."""
        if session is None:
            return
        try:
            memory = json.loads((self.home / MEMORY_FILE).read_text())
            if memory.get("session") == session:
                self.told = {int(n) for n in memory["told"]}
                self.trials_at_start = int(memory["trials_at_start"])
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        trials = self.lab.store.trials(self.lab.run.id)
        self.told = notebook.finished(trials)
        self.trials_at_start = sum(1 for t in trials if t.agent == self.name and t.status.final)

    def _env(self, ctx: TurnContext) -> dict[str, str]:
        """The CLI's environment: no provider credential, no database URL; the gateway and
        its key, and where `overnight try` finds the command center."""
        markers = {k: v for k, v in os.environ.items() if k in (RUN_MARKER, SESSION_MARKER)}
        return self.lab.enclosure.env(
            {
                **markers,
                **self.runtime.env(ctx),
                "PATH": os.pathsep.join(
                    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
                ),
                AGENT_MARKER: self.name,
                URL_ENV: ctx.gateway_url,
                KEY_ENV: ctx.key,
            }
        )

    def _walls(self, ctx: TurnContext, executable: str) -> Walls:
        """The CLI may write its worktree (read it only, when curious) and its own home;
        the lab's state, other agents and the user's credentials are out of sight."""
        worktree = ctx.worktree
        curious = ctx.autonomy == "curious"
        return Walls(
            cwd=worktree,
            writable=(self.home,) if curious else (self.home, worktree),
            readable=(worktree,) if curious else (),
            hidden=self.lab.enclosure.hidden_paths(),
            visible=(
                self.lab.org.root,
                Path(sys.prefix),
                *sandbox.homes_of(Path(executable)),
                Path(__file__).resolve().parents[1],  # the hook and `overnight try`
            ),
        )

    def _submit(self) -> str | None:
        """`overnight try` the turn's change, for a CLI that cannot; None if nothing changed."""
        worktree = Path(self.lab.agent(self.name).worktree)
        if not Git(worktree).dirty():
            return None
        description = self.description or f"{self.runtime.name} turn {self.turns}"
        self.write(f"[overnight] submitting: {description}")
        done = subprocess.run(
            [sys.executable, "-m", "overnight", "try", description],
            cwd=worktree,
            env=self._env(self._context()),
            capture_output=True,
            text=True,
            errors="replace",
        )
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        for line in lines:
            self.write(line)
        return "\n".join(lines)

    def shutdown(self) -> None:
        """Stop after the current turn's CLI is killed (from a signal handler)."""
        self.stop.set()
        child = self._child
        if child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)


def main(worktree: Path) -> None:
    """`overnight agent WORKTREE`: run the agent until a signal stops it."""
    lab, name = Lab.attach(worktree)
    try:

        def write(line: str) -> None:
            # the terminal is mirrored to a log and the web page: no key may show there
            print(f"{time.strftime('%H:%M:%S')} {redaction.redact(line)}", flush=True)

        agent = ExternalAgent(lab, name, write)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            agent.shutdown()

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, on_signal)
        os.environ.setdefault(RUN_MARKER, run_mark(lab.org.root, lab.run.id))
        agent.run()  # the supervisor that stopped it records the agent `paused`
    finally:
        lab.close()
