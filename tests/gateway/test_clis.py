"""The real Claude Code and Codex CLIs doing a scripted, tool-using task through the gateway.

Nothing is mocked. The CLIs (`make clis` installs them into build/clis; the env
var OVERNIGHT_CLIS names another folder) run as subprocesses with a throwaway
HOME / CODEX_HOME, talk to a gateway on loopback holding their virtual key, and
the gateway talks to `FakeProvider` upstreams scripted, in conversation mode, to
make the CLI run tools and then answer. Each test checks what a user would
notice: the tools' effect on disk, the CLI's exit status, its final answer and
the usage it reports, and what the gateway metered for every attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overnight.gateway.meter import Attempt
from overnight.testing import FakeProvider, Reply, ToolCall, Usage
from tests.helpers.clis import claude_cli, codex_cli
from tests.helpers.gateway import Env, gateway, upstream

CLI_TIMEOUT = 60.0
TRIAL = "trial-7"

CLAUDE_MODEL = "claude-opus-5-5"
"""The model Claude Code 2.1.328 asks for when given no --model: the gateway's alias."""
CODEX_MODEL = "gpt-5.5"
"""A model Codex 0.169 has metadata for, so it declares its tools in the request's
`tools` field (its default, gpt-6.1-sol, sends them as an `additional_tools` input item)."""
CODEX_DEFAULT_MODEL = "gpt-6.1-sol"
"""What Codex 0.169 asks for with no `model` in config.toml: its tools come in an
`additional_tools` input item, in namespaces (`functions`, `clock`, `collaboration`), and
it acts through `exec`, a freeform tool running JavaScript that calls the nested tools."""

PRICES: dict[str, dict[str, float]] = {
    "claude-fake-1": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
    "gpt-fake-1": {"input": 2.0, "output": 8.0, "cache_read": 0.2, "cache_write": 2.0},
}


# --- running a CLI ------------------------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"`{' '.join(self.argv)}` exited {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> Run:
    """Run a CLI to completion in its own session; fail the test after CLI_TIMEOUT."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"did not finish within {CLI_TIMEOUT:g}s: {Run(argv, -9, out, err)}")
        finally:
            # Whatever the CLI left running in its session goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return Run(argv, proc.returncode, out, err)


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: no provider keys or proxies leak in from the caller's."""
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "LANG": "C.UTF-8"}


# --- what to expect --------------------------------------------------------------------


def totals(usages: list[Usage]) -> dict[str, int]:
    return {
        "input": sum(u.input_tokens or 0 for u in usages),
        "output": sum(u.output_tokens or 0 for u in usages),
        "cache_read": sum(u.cache_read_tokens for u in usages),
        "cache_write": sum(u.cache_write_tokens for u in usages),
    }


def metered(attempt: Attempt) -> tuple[int, int, int, int]:
    return (
        attempt.input_tokens,
        attempt.output_tokens,
        attempt.cache_read_tokens,
        attempt.cache_write_tokens,
    )


def scripted(usage: Usage) -> tuple[int, int, int, int]:
    return (
        usage.input_tokens or 0,
        usage.output_tokens or 0,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
    )


def cost(usage: Usage, model: str) -> float:
    p = PRICES[model]
    return (
        (usage.input_tokens or 0) * p["input"]
        + (usage.output_tokens or 0) * p["output"]
        + usage.cache_read_tokens * p["cache_read"]
        + usage.cache_write_tokens * p["cache_write"]
    ) / 1e6


def by_request(attempts: list[Attempt]) -> list[list[Attempt]]:
    """Attempts grouped per client request, in the order the requests were made."""
    groups: dict[str, list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: (a.started_at, a.attempt)):
        groups.setdefault(a.request_id, []).append(a)
    return list(groups.values())


def wait_for_answers(env: Env, count: int) -> list[list[Attempt]]:
    """The attempts, once `count` requests have been answered (the CLI has exited by then,
    but the gateway records an attempt just after its last byte is sent)."""
    env.sink.wait_for(lambda attempts: sum(a.outcome == "ok" for a in attempts) >= count)
    return by_request(env.sink.attempts)


def assert_no_key_leaked(env: Env, *fakes: FakeProvider) -> None:
    """The agent's virtual key stays at the gateway: upstreams see the gateway's credentials."""
    for fake in fakes:
        for request in fake.requests:
            assert env.key not in json.dumps(request["headers"]), request["headers"]


def tool_names(body: dict[str, Any]) -> set[str]:
    """Names of the tools a request declares, in any of the three wire formats."""
    return {t.get("name") or t.get("function", {}).get("name") for t in body.get("tools", [])}


# --- Claude Code -----------------------------------------------------------------------

CLAUDE_USAGE = [
    Usage(input_tokens=1200, output_tokens=45, cache_read_tokens=9000, cache_write_tokens=3000),
    Usage(input_tokens=300, output_tokens=20, cache_read_tokens=12000, cache_write_tokens=150),
    Usage(input_tokens=350, output_tokens=60, cache_read_tokens=12150, cache_write_tokens=200),
    Usage(input_tokens=400, output_tokens=12, cache_read_tokens=12350),
]
CLAUDE_FINAL = "DONE: notes.txt now greets the gateway."
CLAUDE_TASK = "Create notes.txt saying hello, then make it greet the gateway."


def claude_script(work: Path) -> list[Reply]:
    """Three tool turns (Bash creates a file, Read reads it, Edit changes it), then a text."""
    notes = str(work / "notes.txt")
    calls = [
        ToolCall("Bash", {"command": "printf 'hello\\n' > notes.txt", "description": "Create it"}),
        ToolCall("Read", {"file_path": notes}),
        ToolCall(
            "Edit", {"file_path": notes, "old_string": "hello", "new_string": "hello, gateway"}
        ),
    ]
    texts = ["I'll create the file first.", "", ""]
    replies = [
        Reply(text=text, tool_calls=[call], usage=usage)
        for text, call, usage in zip(texts, calls, CLAUDE_USAGE[:3], strict=True)
    ]
    return [*replies, Reply(text=CLAUDE_FINAL, usage=CLAUDE_USAGE[-1])]


@dataclass
class ClaudeLab:
    env: Env
    anthropic: FakeProvider
    openai: FakeProvider
    home: Path
    work: Path

    def run(self) -> tuple[Run, dict[str, Any]]:
        env = base_env(self.home) | {
            "ANTHROPIC_BASE_URL": self.env.url,
            "ANTHROPIC_API_KEY": self.env.key,
            "ANTHROPIC_CUSTOM_HEADERS": f"x-overnight-trial: {TRIAL}",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        argv = [
            str(claude_cli()),
            "-p",
            CLAUDE_TASK,
            "--allowedTools",
            "Bash,Read,Edit",
            "--output-format",
            "json",
        ]
        result = run(argv, self.work, env)
        assert result.returncode == 0, result
        try:
            output = json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"Claude Code printed no JSON result: {result}")
        return result, output

    def assert_task_done(self, result: Run, output: dict[str, Any]) -> None:
        assert (self.work / "notes.txt").read_text() == "hello, gateway\n", result
        assert output["is_error"] is False, result
        assert output["result"] == CLAUDE_FINAL, result
        assert output["num_turns"] == len(CLAUDE_USAGE), result
        # The usage Claude Code adds up is the upstream's, whichever vendor answered.
        want = totals(CLAUDE_USAGE)
        usage = output["usage"]
        assert {
            "input": usage["input_tokens"],
            "output": usage["output_tokens"],
            "cache_read": usage["cache_read_input_tokens"],
            "cache_write": usage["cache_creation_input_tokens"],
        } == want, result


@pytest.fixture
def claude(tmp_path: Path) -> Iterator[ClaudeLab]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    script = claude_script(work)
    with (
        FakeProvider("anthropic", script=script, mode="conversation") as a,
        FakeProvider("openai", script=script, mode="conversation") as o,
        gateway(
            [
                upstream("claude-api", "anthropic", a.url, "main"),
                upstream("openai-api", "openai", o.url, "main"),
            ],
            {CLAUDE_MODEL: ["claude-api/claude-fake-1", "openai-api/gpt-fake-1"]},
            prices=PRICES,
            breaker={"failures": 10},  # so every request of the task tries Anthropic first
        ) as env,
    ):
        yield ClaudeLab(env, a, o, home, work)


def test_claude_code_does_a_tool_task_through_the_gateway(claude: ClaudeLab) -> None:
    result, output = claude.run()
    claude.assert_task_done(result, output)

    requests = wait_for_answers(claude.env, len(CLAUDE_USAGE))
    assert [[(a.upstream, a.outcome) for a in r] for r in requests] == [
        [("claude-api", "ok")]
    ] * len(CLAUDE_USAGE), result
    for attempt, usage in zip([r[0] for r in requests], CLAUDE_USAGE, strict=True):
        assert (attempt.agent, attempt.trial, attempt.route) == ("alice", TRIAL, CLAUDE_MODEL)
        assert (attempt.client_protocol, attempt.upstream_protocol) == ("anthropic", "anthropic")
        assert attempt.stream is True
        assert metered(attempt) == scripted(usage)
        assert attempt.cost_usd == pytest.approx(cost(usage, "claude-fake-1"))

    # Claude Code's own request reaches Anthropic unchanged but for the model and the key.
    sent = claude.anthropic.requests
    assert len(sent) == len(CLAUDE_USAGE)
    for request in sent:
        assert (request["path"], request["query"]) == ("/v1/messages", {"beta": "true"})
        assert "claude-code-20250219" in request["headers"]["anthropic-beta"]
        assert request["headers"]["x-api-key"] == "sk-claude-api-main"
        assert request["body"]["model"] == "claude-fake-1"
        assert {"Bash", "Read", "Edit"} <= tool_names(request["body"])
    assert claude.openai.requests == []
    assert_no_key_leaked(claude.env, claude.anthropic)


FAULTS: dict[str, tuple[Callable[[FakeProvider], None], int]] = {
    # Anthropic overloaded for the whole task: every request fails over.
    "overloaded": (lambda fake: fake.fault("status", code=529, times=None), 529),
    # An expired key: rotated out on the first 401, so later requests skip Anthropic.
    "expired_key": (lambda fake: fake.fault("expired_key"), 401),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_claude_code_fails_over_to_an_openai_upstream(claude: ClaudeLab, fault: str) -> None:
    inject, status = FAULTS[fault]
    inject(claude.anthropic)
    result, output = claude.run()
    claude.assert_task_done(result, output)

    requests = wait_for_answers(claude.env, len(CLAUDE_USAGE))
    assert len(requests) == len(CLAUDE_USAGE), requests
    tried_anthropic = [a for r in requests for a in r if a.upstream == "claude-api"]
    if fault == "expired_key":
        assert len(tried_anthropic) == 1
        assert ("credential_rotated_out", "claude-api", "main") in [
            (kind, p.get("upstream"), p.get("credential")) for kind, p in claude.env.events
        ]
    else:
        assert [r[0].upstream for r in requests] == ["claude-api"] * len(CLAUDE_USAGE)
    assert [(a.outcome, a.status) for a in tried_anthropic] == [("failed_over", status)] * len(
        tried_anthropic
    )
    assert all(metered(a) == (0, 0, 0, 0) for a in tried_anthropic)
    for r, usage in zip(requests, CLAUDE_USAGE, strict=True):
        answer = r[-1]
        assert (answer.upstream, answer.outcome, answer.status) == ("openai-api", "ok", 200), r
        assert all(a.upstream == "claude-api" for a in r[:-1]), r
        assert (answer.client_protocol, answer.upstream_protocol) == ("anthropic", "chat")
        assert (answer.agent, answer.trial, answer.route) == ("alice", TRIAL, CLAUDE_MODEL)
        assert metered(answer) == scripted(usage)
        assert answer.cost_usd == pytest.approx(cost(usage, "gpt-fake-1"))
        assert not answer.unpriced

    sent = claude.openai.requests
    assert [r["path"] for r in sent] == ["/v1/chat/completions"] * len(CLAUDE_USAGE)
    assert all(r["headers"]["authorization"] == "Bearer sk-openai-api-main" for r in sent)
    assert {"Bash", "Read", "Edit"} <= tool_names(sent[0]["body"])
    assert_no_key_leaked(claude.env, claude.anthropic, claude.openai)


# --- Codex -----------------------------------------------------------------------------

CODEX_USAGE = [
    Usage(input_tokens=700, output_tokens=20, cache_read_tokens=6000, cache_write_tokens=300),
    Usage(input_tokens=800, output_tokens=5, cache_read_tokens=6300),
]
CODEX_FINAL = "DONE: hello.txt is written."
CODEX_TASK = "Write 'hello from codex' into hello.txt."
CODEX_SCRIPT = [
    Reply(
        tool_calls=[ToolCall("exec_command", {"cmd": "printf 'hello from codex\\n' > hello.txt"})],
        usage=CODEX_USAGE[0],
    ),
    Reply(text=CODEX_FINAL, usage=CODEX_USAGE[1]),
]

# The default model's way to run a command: JavaScript for `exec`, calling `exec_command`.
CODEX_EXEC_JS = (
    "const r = await tools.exec_command({cmd: \"printf 'hello from codex\\\\n' > hello.txt\"});\n"
    "text(JSON.stringify(r));"
)
CODEX_DEFAULT_SCRIPT = [
    Reply(tool_calls=[ToolCall("exec", {"input": CODEX_EXEC_JS})], usage=CODEX_USAGE[0]),
    Reply(text=CODEX_FINAL, usage=CODEX_USAGE[1]),
]

CODEX_ROUTES: dict[str, tuple[list[str], str, str, str]] = {
    # route candidates, the upstream that answers, its wire protocol, the path it is sent
    "responses": (["openai-api/gpt-fake-1"], "openai-api", "responses", "/v1/responses"),
    "chat-only-server": (["local/gpt-fake-1"], "local", "chat", "/v1/chat/completions"),
    "failover-to-anthropic": (
        ["openai-api/gpt-fake-1", "claude-api/claude-fake-1"],
        "claude-api",
        "anthropic",
        "/v1/messages",
    ),
}


def codex_config(gateway_url: str, model: str | None) -> str:
    return f"""\
{f'model = "{model}"' if model else "# no model: Codex's default"}
model_provider = "overnight"

[model_providers.overnight]
name = "overnight gateway"
base_url = "{gateway_url}/v1"
env_key = "OVERNIGHT_GATEWAY_KEY"
wire_api = "responses"
http_headers = {{ "x-overnight-trial" = "{TRIAL}" }}
"""


@dataclass
class CodexRun:
    result: Run
    requests: list[list[Attempt]]
    sent: list[dict[str, Any]]
    env: Env


def run_codex(tmp_path: Path, route: str, model: str | None, script: list[Reply]) -> CodexRun:
    """Codex (`model`, or its default when None) doing CODEX_TASK through `route`."""
    candidates, _, wire, _ = CODEX_ROUTES[route]
    home, codex_home, work = tmp_path / "home", tmp_path / "codex", tmp_path / "work"
    for folder in (home, codex_home, work):
        folder.mkdir()
    with (
        FakeProvider("openai", script=script, mode="conversation") as o,
        FakeProvider("anthropic", script=script, mode="conversation") as a,
        gateway(
            [
                upstream("openai-api", "openai", o.url, "main"),
                upstream("local", "openai", o.url + "/v1", responses_api=False),
                upstream("claude-api", "anthropic", a.url, "main"),
            ],
            {model or CODEX_DEFAULT_MODEL: candidates},
            prices=PRICES,
            breaker={"failures": 10},
        ) as env,
    ):
        if route == "failover-to-anthropic":
            o.fault("status", code=529, times=None)
        (codex_home / "config.toml").write_text(codex_config(env.url, model))
        process_env = base_env(home) | {
            "CODEX_HOME": str(codex_home),
            "OVERNIGHT_GATEWAY_KEY": env.key,
        }
        argv = [
            str(codex_cli()),
            "exec",
            "--skip-git-repo-check",
            # The sandbox is not under test, and needs user namespaces a container may lack.
            "--dangerously-bypass-approvals-and-sandbox",
            "--json",
            CODEX_TASK,
        ]
        result = run(argv, work, process_env)
        requests = wait_for_answers(env, len(CODEX_USAGE))
        fake = a if wire == "anthropic" else o
        sent = fake.requests
        assert_no_key_leaked(env, o, a)
    return CodexRun(result, requests, sent, env)


def assert_codex_task_done(run: CodexRun, work: Path, route: str, alias: str) -> None:
    candidates, answerer, wire, path = CODEX_ROUTES[route]
    result, requests = run.result, run.requests
    assert result.returncode == 0, result
    assert (work / "hello.txt").read_text() == "hello from codex\n", result
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    items = [e["item"] for e in events if e["type"] == "item.completed"]
    # No error items: no unknown-model warning, no "Reconnecting..." retries.
    assert [i for i in items if i["type"] == "error"] == [], result
    assert [e for e in events if e["type"] in ("turn.failed", "error")] == [], result
    commands = [i for i in items if i["type"] == "command_execution"]
    assert [(c["exit_code"], "hello.txt" in c["command"]) for c in commands] == [(0, True)]
    assert [i["text"] for i in items if i["type"] == "agent_message"] == [CODEX_FINAL], result
    # Codex counts input the OpenAI way (cache included): the upstream's usage, translated.
    (done,) = [e for e in events if e["type"] == "turn.completed"]
    want = totals(CODEX_USAGE)
    all_input = want["input"] + want["cache_read"] + want["cache_write"]
    assert done["usage"]["input_tokens"] == all_input, result
    assert done["usage"]["cached_input_tokens"] == want["cache_read"], result
    assert done["usage"]["cache_write_input_tokens"] == want["cache_write"], result
    assert done["usage"]["output_tokens"] == want["output"], result

    assert len(requests) == len(CODEX_USAGE), requests
    model = candidates[-1].partition("/")[2]
    for r, usage in zip(requests, CODEX_USAGE, strict=True):
        answer = r[-1]
        assert (answer.upstream, answer.outcome, answer.status) == (answerer, "ok", 200), r
        assert [(a.upstream, a.outcome, a.status) for a in r[:-1]] == (
            [("openai-api", "failed_over", 529)] if route == "failover-to-anthropic" else []
        )
        assert (answer.client_protocol, answer.upstream_protocol) == ("responses", wire)
        assert (answer.agent, answer.trial, answer.route) == ("alice", TRIAL, alias)
        assert answer.stream is True
        assert metered(answer) == scripted(usage)
        assert answer.cost_usd == pytest.approx(cost(usage, model))
    assert [r["path"] for r in run.sent] == [path] * len(CODEX_USAGE)


@pytest.mark.parametrize("route", list(CODEX_ROUTES))
def test_codex_does_a_tool_task_through_the_gateway(tmp_path: Path, route: str) -> None:
    codex = run_codex(tmp_path, route, CODEX_MODEL, CODEX_SCRIPT)
    assert_codex_task_done(codex, tmp_path / "work", route, CODEX_MODEL)
    assert "exec_command" in tool_names(codex.sent[0]["body"])


def tool_calls(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, arguments) of the tool calls a translated (Chat or Anthropic) request replays."""
    calls = []
    for message in body["messages"]:
        for call in message.get("tool_calls") or []:
            calls.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
        if isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_use":
                    calls.append((block["name"], block["input"]))
    return calls


def tool_result_text(body: dict[str, Any]) -> str:
    """The text of the tool results in a translated (Chat or Anthropic) request."""
    texts = []
    for message in body["messages"]:
        if message["role"] == "tool":
            texts.append(message["content"])
        elif isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    texts.append(json.dumps(block["content"]))
    return "\n".join(texts)


@pytest.mark.parametrize("route", ["failover-to-anthropic", "chat-only-server"])
def test_codex_default_model_keeps_its_tools_across_vendors(tmp_path: Path, route: str) -> None:
    """Codex's default model declares its tools in an `additional_tools` input item, in
    namespaces, and acts through the freeform `exec`: another vendor gets them all as
    functions, and its call of `exec` reaches Codex as the `custom_tool_call` it runs."""
    codex = run_codex(tmp_path, route, None, CODEX_DEFAULT_SCRIPT)
    assert_codex_task_done(codex, tmp_path / "work", route, CODEX_DEFAULT_MODEL)

    first, second = (r["body"] for r in codex.sent)
    names = tool_names(first)
    assert {"exec", "wait", "clock__sleep", "collaboration__spawn_agent"} <= names, names
    (exec_tool,) = [t for t in first["tools"] if (t.get("name") or t["function"]["name"]) == "exec"]
    schema = exec_tool.get("input_schema") or exec_tool["function"]["parameters"]
    assert schema["required"] == ["input"]
    # The second request replays the call under the other vendor's name, with its result.
    assert tool_names(second) == names
    assert tool_calls(second) == [("exec", {"input": CODEX_EXEC_JS})]
    assert "exit_code" in tool_result_text(second)
