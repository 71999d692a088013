"""The state only one vendor understands, and taking it out of a request.

Owns which request fields, content blocks and input items mean something only to
the vendor that made them (signed thinking, server-side tool blocks, cache
markers, stored-response references, reasoning items), for a request that fails
over to another vendor. The conversation's text, tool calls and tool results stay.

Only what changes is copied: a result shares everything else with the request it
came from (a deep copy of a long agent conversation cost more than the rest of its
translation), so neither may be modified in place afterwards.
Knows nothing about translating what stays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overnight.gateway.translate.content import Json, texts_of

# Request fields that only the vendor that issued them understands or accepts.
_ANTHROPIC_ONLY_FIELDS = frozenset(["thinking", "container", "mcp_servers", "context_management"])
_TOOL_MARKS = frozenset(["cache_control"])
_ANTHROPIC_VENDOR_BLOCKS = {
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
}
_OPENAI_ONLY_FIELDS = frozenset(
    [
        "store",
        "metadata",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "prediction",
    ]
)
_OPENAI_MESSAGE_FIELDS = frozenset(
    ["reasoning_content", "reasoning", "reasoning_details", "thinking_blocks"]
)
_RESPONSES_ONLY_FIELDS = frozenset(
    [
        "previous_response_id",
        "conversation",
        "store",
        "include",
        "background",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
    ]
)
_RESPONSES_VENDOR_ITEMS = {"reasoning", "item_reference", "compaction"}


_BLOCK_MARKS = frozenset(["cache_control", "citations"])  # citations point into the
# first vendor's search results


def _without(d: Json, keys: frozenset[str]) -> Json:
    """`d` itself when it holds none of `keys`, else a shallow copy without them."""
    if keys.isdisjoint(d):
        return d
    return {k: v for k, v in d.items() if k not in keys}


def _clean_anthropic_blocks(blocks: list[Any]) -> list[Any]:
    kept = []
    for block in blocks:
        if isinstance(block, dict):
            if block.get("type") in _ANTHROPIC_VENDOR_BLOCKS:
                continue
            block = _without(block, _BLOCK_MARKS)
            if isinstance(block.get("content"), list):
                block = {**block, "content": _clean_anthropic_blocks(block["content"])}
        kept.append(block)
    return kept


def _fold_into_system(body: Json, content: Any) -> None:
    """Claude Code's `role: system` turns, which other Anthropic-speaking servers reject."""
    system = body.get("system") or []
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    body["system"] = blocks + [{"type": "text", "text": text} for text in texts_of(content)]


def strip_anthropic(body: Json) -> Json:
    """An Anthropic Messages request without its vendor state."""
    # With the signed thinking blocks gone, thinking must be off too: Anthropic
    # rejects a thinking request whose last tool-using turn lacks its thinking block.
    out = {k: v for k, v in body.items() if k not in _ANTHROPIC_ONLY_FIELDS}
    if isinstance(out.get("system"), list):
        out["system"] = _clean_anthropic_blocks(out["system"])
    if out.get("tools"):
        out["tools"] = [_without(t, _TOOL_MARKS) for t in out["tools"] if "input_schema" in t]
    messages = []
    for message in out.get("messages") or []:
        if message.get("role") == "system":
            _fold_into_system(out, message.get("content"))
            continue
        if isinstance(message.get("content"), list):
            content = _clean_anthropic_blocks(message["content"])
            if not content:
                continue
            message = {**message, "content": content}
        messages.append(message)
    out["messages"] = messages
    return out


def strip_chat(body: Json) -> Json:
    """A Chat Completions request without OpenAI's (and its imitators') vendor state."""
    out = {k: v for k, v in body.items() if k not in _OPENAI_ONLY_FIELDS}
    if isinstance(out.get("messages"), list):
        out["messages"] = [_without(m, _OPENAI_MESSAGE_FIELDS) for m in out["messages"]]
    return out


def strip_responses(body: Json) -> Json:
    """An OpenAI Responses request without its vendor state."""
    out = {k: v for k, v in body.items() if k not in _RESPONSES_ONLY_FIELDS}
    if isinstance(out.get("input"), list):
        out["input"] = [i for i in out["input"] if i.get("type") not in _RESPONSES_VENDOR_ITEMS]
    return out


_STRIPS: dict[str, Callable[[Json], Json]] = {
    "anthropic": strip_anthropic,
    "openai": strip_chat,
    "responses": strip_responses,
}


def strip_vendor_state(body: Json, protocol: str) -> Json:
    """`body` (a request in `protocol`: anthropic, openai or responses) without the
    state a different vendor would reject; `body` is left as it was. The gateway
    asks its protocol objects instead (`WireProtocol.strip_vendor_state`)."""
    strip = _STRIPS.get(protocol)
    if strip is None:
        raise ValueError(f"unknown protocol {protocol!r}: expected anthropic, openai or responses")
    return strip(body)
