"""External CLI runtimes: how to run Claude Code, Codex and aider headless, one turn at a time.

A *turn* is one run of the CLI in the agent's worktree: the first turn of a
conversation gives it the lab's instructions, every later turn resumes the same
conversation with a short message (a nudge to go on, or "continue" after a
restart). Each CLI is run in its non-interactive JSON mode, so the agent process
knows exactly when a turn starts and ends, which tools it calls, its conversation
id and its errors, with no screen scraping; Claude Code and Codex also say how
full the conversation's context is (Claude Code in its output, Codex in its
session file), so a conversation can end before it rots. The CLI talks to the
lab's gateway with the agent's virtual key.

Owns the command lines, environments and the parsing of each CLI's JSON events,
and registers the three as runtimes (`register_runtimes`, the hook a third-party
CLI's plugin defines too). Knows nothing about the store, trials or sessions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from overnight.errors import UserError
from overnight.proposers.runtime import Register, Runtime, runtime

HOOK_SCRIPT = Path(__file__).resolve().parent.parent / "governance" / "hook.py"
"""Claude Code's PreToolUse hook (standard library only: no import of overnight)."""


@dataclass(frozen=True)
class TurnContext:
    """What a turn needs to know about its agent."""

    agent: str
    worktree: Path
    home: Path
    """A directory private to this agent (the CLI's config and conversation files)."""
    gateway_url: str
    key: str
    model: str
    instructions: str
    files: tuple[str, ...] = ()
    """The editable files in the worktree (for a CLI that must be told what to edit)."""
    autonomy: str = "embedded"
    """curious (no writes), ready or embedded: how far a CLI's own sandbox lets it go."""
    approval_wait: float = 3600.0
    """Seconds a tool call may wait for a human's answer to its approval."""
    command_timeout: float = 3600.0
    """Seconds a shell command may run: `overnight try` lasts a trial's whole budget
    (and any re-confirmation, and a wait for approval)."""
    sandboxed: bool = False
    """The CLI runs inside overnight's sandbox (a CLI's own one then stands down)."""


@dataclass
class TurnEvent:
    """What one line of a CLI's JSON output says, for the terminal and the agent's state."""

    show: list[str] = field(default_factory=list)
    session: str | None = None
    tool: str | None = None
    done: bool = False
    error: str | None = None
    retry_at: float | None = None
    """When a rate limit says to come back (epoch seconds)."""
    description: str | None = None
    """What the agent says it changed (for runtimes whose turns overnight submits)."""
    context_used: int | None = None
    """Tokens of the conversation's context as of the model's latest reply (its prompt)."""
    context_window: int | None = None
    """The model's context window, as the CLI knows it."""


class CliRuntime(Runtime, Protocol):
    """A runtime whose agent runs a CLI in a terminal session, turn after turn (its
    `terminal` is True). `BaseCli` holds what every one shares."""

    binary: str
    install: str
    submits: bool
    """True when the CLI cannot run `overnight try` itself: the agent process submits
    the worktree after each turn that changed it, and tells the next turn the result."""

    def executable(self) -> str | None:
        """The CLI's path, or None when it is not installed."""

    def turn(self, ctx: TurnContext, prompt: str, session: str | None) -> tuple[list[str], str]:
        """argv of one turn and the conversation id it will have (None session: a new one)."""

    def env(self, ctx: TurnContext) -> dict[str, str]:
        """What the CLI's environment adds to the agent's."""

    def parse(self, line: str) -> TurnEvent:
        """One line of the CLI's stdout."""

    def context(self, ctx: TurnContext, session: str) -> tuple[int, int] | None:
        """After a turn: (tokens in the conversation's context, the model's window), for a
        CLI that records them outside its output; None when it does not say."""


def _which(env_var: str, binary: str) -> str | None:
    override = os.environ.get(env_var)
    if override:
        return override if Path(override).exists() else None
    return shutil.which(binary)


def _decode(line: str) -> tuple[dict[str, Any] | None, TurnEvent]:
    """A JSON output line's object (None if it is not one: plain text is shown as it is)."""
    event = TurnEvent()
    try:
        data = json.loads(line)
    except ValueError:
        event.show.append(line.rstrip())
        return None, event
    return (data if isinstance(data, dict) else None), event


def _short(text: str, limit: int = 160) -> str:
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


_EPOCH_RE = re.compile(r"(?:reset\w*|retry\w*|limit reached)\D{0,40}?\b(\d{10})\b", re.I)
_AFTER_RE = re.compile(
    r"(?:retry[- ]after|retry in|try again in)\W{0,3}(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds|m|min|minutes)?\b",
    re.I,
)
_UNIT = {"ms": 0.001, "m": 60.0, "min": 60.0, "minutes": 60.0}


def retry_at(message: str, now: float | None = None) -> float | None:
    """When a rate-limit message says to come back (epoch seconds): an epoch reset time
    ("usage limit reached|1767225600", "resets at 1767225600"), or a wait ("retry in 30s",
    "Retry-After: 12"). None when it says neither."""
    now = time.time() if now is None else now
    match = _EPOCH_RE.search(message)
    if match is not None:
        return float(match.group(1))
    match = _AFTER_RE.search(message)
    if match is not None:
        return now + float(match.group(1)) * _UNIT.get((match.group(2) or "s").lower(), 1.0)
    return None


class BaseCli:
    """What the CLI runtimes share: a terminal each, a model behind the gateway, and a
    CLI that must be installed."""

    name: str
    binary: str
    install: str
    terminal = True
    llm = True
    knobs = False

    def executable(self) -> str | None:
        raise NotImplementedError

    def missing(self) -> str | None:
        if self.executable() is not None:
            return None
        return (
            f"the {self.name} runtime runs the `{self.binary}` command, which is not "
            f"installed (not on PATH).\n  fix: {self.install}"
        )


class ClaudeCode(BaseCli):
    """`claude -p` with stream-json output; `--resume` continues the conversation."""

    name = "claude-code"
    binary = "claude"
    submits = False
    install = (
        "npm install -g @anthropic-ai/claude-code (or set OVERNIGHT_CLAUDE to the `claude` binary)"
    )
    tools = ("Bash", "Edit", "MultiEdit", "Write", "Read", "Glob", "Grep", "LS")

    def executable(self) -> str | None:
        return _which("OVERNIGHT_CLAUDE", self.binary)

    def turn(self, ctx: TurnContext, prompt: str, session: str | None) -> tuple[list[str], str]:
        exe = self.executable()
        assert exe is not None
        argv = [
            exe, "-p", prompt,
            "--output-format", "stream-json", "--verbose",
            "--model", ctx.model,
            "--allowedTools", ",".join(self.tools),
            "--append-system-prompt", ctx.instructions,
            "--settings", json.dumps(self.settings(ctx)),
        ]  # fmt: skip
        if session is None:
            session = str(uuid.uuid4())
            argv += ["--session-id", session]
        else:
            argv += ["--resume", session]
        return argv, session

    @staticmethod
    def settings(ctx: TurnContext) -> dict[str, Any]:
        """Every tool call asks the command center first (`overnight.governance.hook`, run
        by the interpreter itself, isolated and without site-packages, so it starts in
        ~30 ms). Claude Code's own timeout is set past the hook's, which denies on its
        own deadline: a hook that Claude Code times out would let the call through."""
        python = os.path.realpath(sys.executable)
        command = f"{shlex.quote(python)} -I -S {shlex.quote(str(HOOK_SCRIPT))}"
        hook = {"type": "command", "command": command, "timeout": int(ctx.approval_wait) + 120}
        return {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [hook]}]}}

    def env(self, ctx: TurnContext) -> dict[str, str]:
        timeout_ms = str(int(ctx.command_timeout * 1000))
        return {
            "ANTHROPIC_BASE_URL": ctx.gateway_url,
            "ANTHROPIC_API_KEY": ctx.key,
            "CLAUDE_CONFIG_DIR": str(ctx.home / "claude"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "OVERNIGHT_HOOK_URL": ctx.gateway_url,
            "OVERNIGHT_HOOK_WAIT": str(int(ctx.approval_wait)),
            # `overnight try` runs a whole trial: Bash's 2-minute default would kill it
            "BASH_DEFAULT_TIMEOUT_MS": timeout_ms,
            "BASH_MAX_TIMEOUT_MS": timeout_ms,
        }

    def parse(self, line: str) -> TurnEvent:
        data, event = _decode(line)
        if data is None:
            return event
        kind = data.get("type")
        if isinstance(data.get("session_id"), str):
            event.session = data["session_id"]
        if kind == "assistant":
            message = data.get("message") or {}
            if data.get("parent_tool_use_id") is None:  # a subagent's context is its own
                event.context_used = _prompt_tokens(message.get("usage"))
            for block in message.get("content") or []:
                if block.get("type") == "text" and block.get("text", "").strip():
                    event.show.append("● " + _short(block["text"], 400))
                elif block.get("type") == "tool_use":
                    event.tool = str(block.get("name"))
                    event.show.append(f"→ {event.tool}: {_short(json.dumps(block.get('input')))}")
        elif kind == "user":
            for block in (data.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    content = block.get("content")
                    if isinstance(content, list):
                        content = " ".join(str(c.get("text", "")) for c in content)
                    event.show.append(f"  ← {_short(str(content))}")
        elif kind == "result":
            event.done = True
            event.context_window = _context_window(data.get("modelUsage"))
            text = str(data.get("result") or "")
            if data.get("is_error") or data.get("subtype") != "success":
                event.error = _short(text or str(data.get("subtype")), 400)
                event.retry_at = retry_at(text)
                event.show.append(f"✗ turn failed: {event.error}")
            else:
                event.show.append("✓ turn done")
        return event

    def context(self, ctx: TurnContext, session: str) -> tuple[int, int] | None:
        return None  # it says so in its output: see `parse`


def _prompt_tokens(usage: Any) -> int | None:
    """The prompt of one Anthropic request, in tokens: what the conversation fills.

    Claude Code's stream-json `assistant` events carry the request's `usage` (from the
    stream's start, so `output_tokens` there is 1, not the reply's length)."""
    if not isinstance(usage, dict):
        return None
    parts = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    counts = [usage.get(k) for k in parts]
    if not all(isinstance(c, int) or c is None for c in counts) or counts[0] is None:
        return None
    return sum(c or 0 for c in counts)


def _context_window(model_usage: Any) -> int | None:
    """The main model's `contextWindow` in a `result` event's `modelUsage` (per model name:
    the conversation's model is the one that read the most input). Claude Code knows
    windows by model name: for a name it does not know (a gateway alias) it says 1000000."""
    if not isinstance(model_usage, dict):
        return None
    best: tuple[int, int] | None = None
    for usage in model_usage.values():
        if not isinstance(usage, dict) or not isinstance(usage.get("contextWindow"), int):
            continue
        read = sum(
            v for k in ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
            if isinstance(v := usage.get(k), int)
        )  # fmt: skip
        if best is None or read > best[0]:
            best = (read, usage["contextWindow"])
    return best[1] if best else None


class Codex(BaseCli):
    """`codex exec --json`; `codex exec resume ID` continues the conversation."""

    name = "codex"
    binary = "codex"
    submits = False
    install = "npm install -g @openai/codex (or set OVERNIGHT_CODEX to the `codex` binary)"

    def executable(self) -> str | None:
        return _which("OVERNIGHT_CODEX", self.binary)

    def turn(self, ctx: TurnContext, prompt: str, session: str | None) -> tuple[list[str], str]:
        exe = self.executable()
        assert exe is not None
        self._write_config(ctx)
        # The sandbox and approval mode follow the agent's autonomy (see _write_config);
        # overnight's integrity guard still judges whatever the agent changes.
        common = ["--json", "--skip-git-repo-check", "-m", ctx.model]
        if session is None:
            return [exe, "exec", *common, prompt], ""
        return [exe, "exec", "resume", *common, session, prompt], session

    def _write_config(self, ctx: TurnContext) -> None:
        home = ctx.home / "codex"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'model = "{ctx.model}"\n'
            'model_provider = "overnight"\n'
            # a login shell resets PATH from /etc/profile, and `overnight` must stay on it
            "allow_login_shell = false\n"
            f"developer_instructions = {json.dumps(ctx.instructions)}\n"
            # nobody is there to answer Codex's own prompts: a command its sandbox refuses
            # fails back to the model, and overnight's policies decide the rest
            'approval_policy = "never"\n'
            f"{self._sandbox(ctx)}\n"
            "[model_providers.overnight]\n"
            'name = "overnight gateway"\n'
            f'base_url = "{ctx.gateway_url}/v1"\n'
            'env_key = "OVERNIGHT_GATEWAY_KEY"\n'
            'wire_api = "responses"\n'
        )

    @staticmethod
    def _sandbox(ctx: TurnContext) -> str:
        """Inside overnight's sandbox Codex's own stands down: ours already makes a curious
        agent's worktree read-only and hides the lab's state, and Codex 0.169's own fails
        where a system `bwrap` is installed ("execvp codex-linux-sandbox"). Without ours,
        a curious agent's commands may read but not write; the others may write in the
        worktree and reach the network (`overnight try` talks to the command center)."""
        if ctx.sandboxed:
            return 'sandbox_mode = "danger-full-access"\n'
        if ctx.autonomy == "curious":
            return 'sandbox_mode = "read-only"\n'
        return (
            'sandbox_mode = "workspace-write"\n\n[sandbox_workspace_write]\nnetwork_access = true\n'
        )

    def env(self, ctx: TurnContext) -> dict[str, str]:
        return {"CODEX_HOME": str(ctx.home / "codex"), "OVERNIGHT_GATEWAY_KEY": ctx.key}

    def parse(self, line: str) -> TurnEvent:
        data, event = _decode(line)
        if data is None:
            return event
        kind = data.get("type")
        if kind == "thread.started" and isinstance(data.get("thread_id"), str):
            event.session = data["thread_id"]
        elif kind in ("item.started", "item.completed"):
            item = data.get("item") or {}
            itype = item.get("type")
            if itype == "agent_message" and kind == "item.completed":
                event.show.append("● " + _short(str(item.get("text", "")), 400))
            elif itype == "command_execution":
                event.tool = "shell"
                if kind == "item.started":
                    event.show.append(f"→ shell: {_short(str(item.get('command')))}")
                else:
                    out = _short(str(item.get("aggregated_output", "")))
                    event.show.append(f"  ← exit {item.get('exit_code')}: {out}")
            elif itype == "file_change" and kind == "item.completed":
                event.tool = "edit"
                paths = [c.get("path") for c in item.get("changes") or []]
                event.show.append(f"→ edit: {', '.join(map(str, paths))}")
        elif kind == "turn.completed":
            event.done = True
            event.show.append("✓ turn done")
        elif kind in ("turn.failed", "error"):
            message = data.get("message") or (data.get("error") or {}).get("message") or kind
            event.error = _short(str(message), 400)
            event.retry_at = retry_at(str(message))
            event.done = kind == "turn.failed"
            event.show.append(f"✗ {event.error}")
        return event

    def context(self, ctx: TurnContext, session: str) -> tuple[int, int] | None:
        """From the thread's session file: `codex exec --json` reports only the turn's
        summed usage, while `$CODEX_HOME/sessions/**/rollout-*-<thread>.jsonl` records a
        `token_count` event after every request, with `last_token_usage` (the latest
        request: its prompt and reply) and `model_context_window`."""
        sessions = ctx.home / "codex" / "sessions"
        files = sorted(sessions.glob(f"*/*/*/rollout-*-{session}.jsonl")) if session else []
        if not files:
            return None
        try:
            with files[-1].open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _ROLLOUT_TAIL))
                tail = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        for line in reversed(tail):
            if '"token_count"' not in line:
                continue
            try:
                info = json.loads(line)["payload"]["info"]
                last = info["last_token_usage"]
                used = last.get("total_tokens") or last["input_tokens"] + last["output_tokens"]
                window = info["model_context_window"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(used, int) and isinstance(window, int) and window > 0:
                return used, window
        return None


_ROLLOUT_TAIL = 256 * 1024
"""Bytes read from the end of a Codex session file to find its latest token count."""


class Aider(BaseCli):
    """`aider --message FILES...` through the gateway's OpenAI-compatible endpoint, with
    SEARCH/REPLACE edits and its chat history in the agent's private directory. aider
    does not run shell commands unattended, so overnight submits each turn's change."""

    name = "aider"
    binary = "aider"
    submits = True
    install = "pip install aider-chat (or set OVERNIGHT_AIDER to the `aider` binary)"

    def executable(self) -> str | None:
        return _which("OVERNIGHT_AIDER", self.binary)

    def turn(self, ctx: TurnContext, prompt: str, session: str | None) -> tuple[list[str], str]:
        exe = self.executable()
        assert exe is not None
        history = ctx.home / "aider"
        history.mkdir(parents=True, exist_ok=True)
        full = prompt if session else f"{ctx.instructions}\n\n{prompt}"
        # A conversation is a chat history file: a new one starts with an empty file.
        session = session or f"aider-{uuid.uuid4().hex[:12]}"
        # (the one file of a run begun before conversations had a file each)
        chat = "chat.md" if session == "aider-chat-history" else f"{session}.md"
        argv = [
            exe, "--yes-always", "--no-git", "--no-gitignore",
            "--no-check-update", "--no-show-model-warnings", "--no-pretty", "--map-tokens", "0",
            "--no-analytics", "--no-auto-lint", "--edit-format", "diff",
            "--model", f"openai/{ctx.model}",
            "--openai-api-base", f"{ctx.gateway_url}/v1",
            "--chat-history-file", str(history / chat),
            "--input-history-file", str(history / "input"),
            "--restore-chat-history",
            "--message", full,
            *ctx.files,
        ]  # fmt: skip
        return argv, session

    def env(self, ctx: TurnContext) -> dict[str, str]:
        # LiteLLM inside aider would fetch its price list from the internet otherwise.
        return {"OPENAI_API_KEY": ctx.key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def parse(self, line: str) -> TurnEvent:
        text = line.rstrip()
        event = TurnEvent(show=[text])
        if text.startswith("DESCRIPTION:"):
            event.description = text.removeprefix("DESCRIPTION:").strip()
        return event

    def context(self, ctx: TurnContext, session: str) -> tuple[int, int] | None:
        return None  # aider summarizes a long chat history itself


def register_runtimes(register: Register) -> None:
    for cli in (ClaudeCode(), Codex(), Aider()):
        register(cli)


def cli(name: str) -> CliRuntime:
    """The runtime called `name`, which runs in a terminal."""
    found = runtime(name)
    if not found.terminal:
        raise UserError(f"the {name} runtime runs on a thread of `overnight run`, not a terminal")
    return cast(CliRuntime, found)  # what `terminal` promises


def instructions(
    program: str, agent: str, editable: list[str], metric: str, goal: str, submits: bool = False
) -> str:
    """What an external agent is told, besides the lab's program.md."""
    files = ", ".join(editable)
    if submits:
        how = f"""- Make one experiment per reply. Begin the reply with a line
      DESCRIPTION: <one line saying what you change and why>
  then make the edit. After your reply, overnight commits your change, runs the experiment
  under its time budget and tells you the result in the next message. The metric is
  {metric} ({goal} it). A better result is KEPT and the files stay that way; otherwise the
  change is DISCARDED and the files are put back as they were at the best result."""
    else:
        how = f"""- When a change is ready, submit it with the shell command:
      overnight try "<one line saying what you changed and why>"
  It commits your worktree, runs the experiment under its time budget, and prints the result.
  The metric is {metric} ({goal} it). A better result is KEPT and your worktree stays on it;
  otherwise the change is DISCARDED and your worktree is reset to the best commit (read the
  printed lines: they say which). Do not run the experiment yourself to judge it; only
  `overnight try` counts.
- One `overnight try` at a time."""
    if submits:
        notes = """- Other agents work on the same lab. Each message after your first lists their
  results since your previous reply (the lab notebook)."""
    else:
        notes = """- Other agents work on the same lab. Before choosing an experiment, run
      overnight notes
  to read the lab notebook: what every agent tried, kept, discarded or crashed, with deltas
  against the best and the baseline. Each message after your first also lists their
  results since your previous turn."""
    return f"""You are {agent}, a research agent in an overnight lab. Your working directory is your
own git worktree of the lab's repository.

How the lab works:
- Change only these files: {files}. Any other change (including new files) gets the trial
  rejected, and the protected evaluator is checked before and after every run.
{how}
{notes}
- Keep going: after each result, think about what to try next, using what the earlier
  trials taught you. Do not repeat a change that was discarded, yours or another agent's.

The lab's program:

{program}
"""


def key_of(path: Path | None) -> str:
    if path is None:
        raise UserError("this agent has no gateway key; the lab needs a [gateway]")
    return path.read_text().strip()
