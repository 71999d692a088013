"""What the fake model says: scripted replies, in no vendor's format.

Owns `Reply`, `ToolCall` and `Usage`, their JSON form (the script file and the
admin endpoint), the rough token estimate used when a reply names no usage, and
choosing a conversation's reply from the tool results already in it. Knows
nothing about HTTP or wire formats: `wire.py` renders a reply for one API and
`fake_provider.py` decides which reply a request gets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from overnight.errors import ConfigError

StopReason = Literal["end_turn", "tool_use", "max_tokens"]
"""Why a reply ended, in Anthropic's words; `wire.py` maps them for OpenAI
(`stop`, `tool_calls`, `length`; an `incomplete` response for Responses)."""


@dataclass(frozen=True)
class ToolCall:
    """One tool the model asks to run. `id=None` gets an id in the API's own style."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens a reply reports, split the way Anthropic bills them.

    - `input_tokens`: input neither read from nor written to the prompt cache
      (Anthropic's `input_tokens`; OpenAI's `prompt_tokens` is this plus both
      cache fields).
    - `cache_read_tokens`, `cache_write_tokens`: input read from / written to
      the cache (OpenAI: `cached_tokens` / `cache_write_tokens`).
    - `output_tokens`: every generated token, reasoning included, as both
      vendors count it; `reasoning_tokens` is the part of it spent thinking.

    `None` for input or output means "estimate it": about one token per four
    characters of the request's text or of the reply.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    """One model turn: text, tool calls, or both (text first, as the models do)."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    usage: Usage | None = None
    stop_reason: StopReason | None = None
    """`None`: `tool_use` when there are tool calls, else `end_turn`."""

    @property
    def final_stop_reason(self) -> StopReason:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if self.tool_calls else "end_turn"


DEFAULT_REPLY = Reply(text="ok")


def estimate_tokens(text: str) -> int:
    """A rough token count: good enough for metering tests, and never 0 for real text."""
    return math.ceil(len(text) / 4)


def output_text(reply: Reply) -> str:
    """What a reply generates, as text, for estimating its output tokens."""
    calls = "".join(c.name + json.dumps(dict(c.arguments)) for c in reply.tool_calls)
    return reply.text + calls


# --- JSON form -------------------------------------------------------------------------

_REPLY_KEYS = {"text", "tool_calls", "usage", "stop_reason"}
_USAGE_KEYS = {
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
}


def reply_from_json(data: Any, where: str = "reply") -> Reply:
    """A `Reply` from its JSON form; `ValueError` naming the field that is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f'{where}: expected an object like {{"text": "hi"}}, got {data!r}')
    unknown = set(data) - _REPLY_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_REPLY_KEYS)}"
        )
    text = data.get("text", "")
    if not isinstance(text, str):
        raise ValueError(f"{where}.text: expected a string, got {text!r}")
    calls_data = data.get("tool_calls", [])
    if not isinstance(calls_data, list):
        raise ValueError(f"{where}.tool_calls: expected a list, got {calls_data!r}")
    calls = [_tool_call_from_json(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls_data)]
    usage = None if data.get("usage") is None else _usage_from_json(data["usage"], f"{where}.usage")
    stop = data.get("stop_reason")
    if stop is not None and stop not in get_args(StopReason):
        raise ValueError(
            f"{where}.stop_reason: expected one of {get_args(StopReason)}, got {stop!r}"
        )
    return Reply(text=text, tool_calls=calls, usage=usage, stop_reason=stop)


def reply_to_json(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"text": reply.text}
    if reply.tool_calls:
        out["tool_calls"] = [
            {"name": c.name, "arguments": dict(c.arguments)} | ({"id": c.id} if c.id else {})
            for c in reply.tool_calls
        ]
    if reply.usage is not None:
        u = reply.usage
        out["usage"] = {k: getattr(u, k) for k in sorted(_USAGE_KEYS)}
    if reply.stop_reason is not None:
        out["stop_reason"] = reply.stop_reason
    return out


def _tool_call_from_json(data: Any, where: str) -> ToolCall:
    if not isinstance(data, dict):
        raise ValueError(f'{where}: expected an object like {{"name": "Bash", "arguments": {{}}}}')
    unknown = set(data) - {"name", "arguments", "id"}
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: arguments, id, name"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: expected the tool's name, got {name!r}")
    arguments = data.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}.arguments: expected an object, got {arguments!r}")
    call_id = data.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise ValueError(f"{where}.id: expected a string, got {call_id!r}")
    return ToolCall(name=name, arguments=arguments, id=call_id)


def _usage_from_json(data: Any, where: str) -> Usage:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object of token counts, got {data!r}")
    unknown = set(data) - _USAGE_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_USAGE_KEYS)}"
        )
    for key, value in data.items():
        optional = key in ("input_tokens", "output_tokens")
        if (value is None and optional) or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            continue
        raise ValueError(f"{where}.{key}: expected a token count (an integer >= 0), got {value!r}")
    return Usage(**data)


def load_script(path: Path) -> list[Reply]:
    """The replies of a script file: a JSON list of reply objects.

    Raises `ConfigError` (a user error) naming the file, the reply and the field.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, f"cannot read the script ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"not valid JSON ({exc})", fix=_SCRIPT_FIX) from None
    if not isinstance(data, list):
        raise ConfigError(path, "a script is a JSON list of replies", fix=_SCRIPT_FIX)
    replies = []
    for i, item in enumerate(data):
        try:
            replies.append(reply_from_json(item, f"[{i}]"))
        except ValueError as exc:
            field_name, _, problem = str(exc).partition(": ")
            raise ConfigError(path, problem, field=field_name, fix=_SCRIPT_FIX) from None
    return replies


_SCRIPT_FIX = (
    'write e.g. [{"tool_calls": [{"name": "Bash", "arguments": {"command": "ls"}}]}, '
    '{"text": "done", "usage": {"input_tokens": 10, "output_tokens": 2}}]'
)


# --- conversation mode -----------------------------------------------------------------


def reply_for_conversation(script: Sequence[Reply], tool_results: int) -> Reply:
    """The script's reply for a conversation that already holds `tool_results` results.

    Each tool-calling reply is answered by one result per call, so walking the
    script and spending results on each reply's calls finds the first reply not
    yet answered. Counting results rather than assistant turns matters: Claude
    Code merges consecutive assistant turns into one message. Past the end of
    the script the answer is the default reply.
    """
    remaining = tool_results
    for reply in script:
        calls = len(reply.tool_calls)
        if calls == 0 or remaining < calls:
            return reply
        remaining -= calls
    return DEFAULT_REPLY
