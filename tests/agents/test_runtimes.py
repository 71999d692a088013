"""What the agent process reads from each CLI's JSON lines: session ids, turn ends, errors, and
when a rate limit says to come back."""

from __future__ import annotations

import json

import pytest

from overnight.agents.runtimes import ClaudeCode, Codex, retry_at


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Claude AI usage limit reached|1767225600", 1767225600.0),
        ("429 rate limited; the limit resets at 1767225600", 1767225600.0),
        ("every candidate of 'smart' is rate-limited; retry in 30s", 1030.0),
        ("Retry-After: 12", 1012.0),
        ("slow down, retry in 250ms", 1000.25),
        ("Please try again in 2 minutes.", 1120.0),
        ("the answer is 1767225600", None),
        ("API Error: 500 internal", None),
    ],
)
def test_retry_at_reads_reset_times_and_waits(message: str, expected: float | None) -> None:
    assert retry_at(message, now=1000.0) == expected


def test_claude_code_lines() -> None:
    cc = ClaudeCode()
    init = cc.parse(json.dumps({"type": "system", "subtype": "init", "session_id": "s-1"}))
    assert init.session == "s-1" and not init.done
    tool = cc.parse(
        json.dumps(
            {
                "type": "assistant",
                "session_id": "s-1",
                "message": {
                    "content": [
                        {"type": "text", "text": "Trying a wider layer."},
                        {
                            "type": "tool_use",
                            "name": "Bash",
                            "input": {"command": "overnight try x"},
                        },
                    ]
                },
            }
        )
    )
    assert tool.tool == "Bash" and tool.show[0] == "● Trying a wider layer."
    assert "overnight try x" in tool.show[1]
    limited = cc.parse(
        json.dumps(
            {
                "type": "result",
                "subtype": "success",
                "is_error": True,
                "result": "Claude AI usage limit reached|1767225600",
                "session_id": "s-1",
            }
        )
    )
    assert limited.done and limited.retry_at == 1767225600.0 and limited.error
    ok = cc.parse(json.dumps({"type": "result", "subtype": "success", "is_error": False}))
    assert ok.done and ok.error is None
    assert cc.parse("not json at all").show == ["not json at all"]


def test_codex_lines() -> None:
    cx = Codex()
    assert cx.parse(json.dumps({"type": "thread.started", "thread_id": "t-9"})).session == "t-9"
    run = cx.parse(
        json.dumps(
            {
                "type": "item.completed",
                "item": {"type": "command_execution", "command": "ls", "exit_code": 0},
            }
        )
    )
    assert run.tool == "shell" and "exit 0" in run.show[0]
    failed = cx.parse(
        json.dumps({"type": "turn.failed", "error": {"message": "rate limited, retry in 5s"}})
    )
    assert failed.done and failed.error and failed.retry_at is not None
    assert cx.parse(json.dumps({"type": "turn.completed", "usage": {}})).done
