"""What every translation here shares: the JSON aliases, the text and argument helpers.

Owns how a content field's text pieces are read, how tool arguments are parsed and
written, how fresh ids look, and the conventions every pair of protocols keeps (how
several texts join into one string, where unparseable arguments are kept).
Knows no protocol's shapes beyond the text parts they share.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

Json = dict[str, Any]
Event = tuple[str, Json]
"""A stream event as the converters make it: (name, data)."""

# How several text blocks collapse into one OpenAI string (and back, streaming).
JOIN = "\n\n"
# A model that emits non-JSON tool arguments keeps them here, for the client to reject.
RAW_ARGUMENTS = "_raw_arguments"
TEXT_PARTS = {"text", "input_text", "output_text"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def texts_of(content: Any) -> list[str]:
    """The non-empty text pieces of a content field: a string or a list of parts."""
    if isinstance(content, str):
        return [content] if content else []
    pieces: list[str] = []
    for part in content or []:
        if isinstance(part, str):
            text = part
        elif isinstance(part, dict) and part.get("type") in TEXT_PARTS:
            text = str(part.get("text") or "")
        else:
            continue
        if text:
            pieces.append(text)
    return pieces


def parse_arguments(arguments: Any) -> Json:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {RAW_ARGUMENTS: arguments}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: arguments}


def dump_arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def simplify_parts(parts: list[Json]) -> str | list[Json]:
    """A lone text part becomes a plain string: the form every OpenAI server accepts."""
    if len(parts) == 1 and parts[0].get("type") == "text":
        return str(parts[0]["text"])
    return parts


def copy_sampling(body: Json, out: Json) -> None:
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]


def first_choice(resp: Json) -> Json:
    """The first choice of a chat.completion (Chat clients ask for one)."""
    choices = resp.get("choices") or [{}]
    return dict(choices[0])
