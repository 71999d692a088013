"""Token usage, read from each wire format and written back into each.

Owns `Usage` (every token counted once, cache reads and writes apart, as they are
priced) and the one reading of each format's usage record, which metering shares
with what a translated answer shows its client, so the two never disagree.
Knows nothing about the rest of a request or an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(slots=True)
class Usage:
    """Tokens of one call, each counted once.

    `input_tokens` is the uncached input only; cache reads and writes are apart
    because they are priced apart. `output_tokens` includes `reasoning_tokens`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


def _int(value: Any) -> int:
    """A token count from an upstream's usage; anything that is not a whole number counts 0."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def _details(u: Json, key: str) -> Json:
    value = u.get(key)
    return value if isinstance(value, dict) else {}


def usage_from_anthropic(u: Json) -> Usage:
    """Anthropic's `input_tokens` already excludes both cache counts."""
    return Usage(
        input_tokens=_int(u.get("input_tokens")),
        output_tokens=_int(u.get("output_tokens")),
        cache_read_tokens=_int(u.get("cache_read_input_tokens")),
        cache_write_tokens=_int(u.get("cache_creation_input_tokens")),
        reasoning_tokens=_int(_details(u, "output_tokens_details").get("thinking_tokens")),
    )


def usage_from_openai(u: Json) -> Usage:
    """OpenAI's `prompt_tokens` includes the cached tokens (read and written): taken out."""
    details = _details(u, "prompt_tokens_details")
    # DeepSeek spells the cached count `prompt_cache_hit_tokens`.
    cached = _int(details.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens"))
    written = _int(details.get("cache_write_tokens"))
    return Usage(
        input_tokens=max(_int(u.get("prompt_tokens")) - cached - written, 0),
        output_tokens=_int(u.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_int(_details(u, "completion_tokens_details").get("reasoning_tokens")),
    )


def usage_from_responses(u: Json) -> Usage:
    """Responses' `input_tokens` includes the cached tokens, like Chat Completions."""
    details = _details(u, "input_tokens_details")
    cached = _int(details.get("cached_tokens"))
    written = _int(details.get("cache_write_tokens"))
    return Usage(
        input_tokens=max(_int(u.get("input_tokens")) - cached - written, 0),
        output_tokens=_int(u.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_int(_details(u, "output_tokens_details").get("reasoning_tokens")),
    )


def merge_anthropic_usage(prev: Usage, u: Json) -> Usage:
    """A `message_delta` carries cumulative counts; absent ones keep their earlier value."""

    def pick(key: str, old: int) -> int:
        value = u.get(key)
        return old if value is None else int(value)

    return Usage(
        input_tokens=pick("input_tokens", prev.input_tokens),
        output_tokens=pick("output_tokens", prev.output_tokens),
        cache_read_tokens=pick("cache_read_input_tokens", prev.cache_read_tokens),
        cache_write_tokens=pick("cache_creation_input_tokens", prev.cache_write_tokens),
        reasoning_tokens=prev.reasoning_tokens,
    )


def anthropic_usage(u: Usage) -> Json:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }


def openai_usage(u: Usage) -> Json:
    return {
        "prompt_tokens": u.total_input,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_input + u.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def responses_usage(u: Usage) -> Json:
    return {
        "input_tokens": u.total_input,
        "input_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_input + u.output_tokens,
    }
