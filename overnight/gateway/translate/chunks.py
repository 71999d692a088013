"""Reading a Chat Completions stream, for the converters that turn it into another one.

Owns the loop over `chat.completion.chunk` dicts that every chunk-fed converter
shares (an in-band error raises, usage is kept, only the first choice counts, text
and tool-call deltas come in order, a finish reason then the usage chunk close the
stream), how a tool-call delta finds the call it extends, and the error a failed
stream raises. Knows nothing about what a subclass makes of the pieces.
"""

from __future__ import annotations

from typing import Any

from overnight.gateway.translate.content import Event, Json
from overnight.gateway.translate.usage import Usage, usage_from_openai


class UpstreamStreamError(Exception):
    """The upstream reported an error inside a stream that had already started.

    Raised by the stream converters so that a failed stream can never be closed
    as a (truncated) success; the caller turns it into its client's error event.
    """

    def __init__(self, error: Any) -> None:
        self.error = error
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(str(message or error))


def named_event(name: str, **fields: Any) -> Event:
    return name, {"type": name, **fields}


def call_key(call: Json, last: Any) -> Any:
    """Which upstream tool call a delta extends: its index, else (servers that omit
    the index) its id, else the call before."""
    if call.get("index") is not None:
        return call["index"]
    return call.get("id") or last


def check_chunk(chunk: Json) -> None:
    if chunk.get("error"):
        raise UpstreamStreamError(chunk["error"])


class ChatChunks:
    """chat.completion.chunk dicts in, a subclass's events out.

    The stream closes when it has both its `finish_reason` and the usage chunk that
    follows it (`stream_options.include_usage`), or at `finish()`. `complete` says
    whether the upstream ended its reply properly; `usage` holds its own counts.

    A subclass makes its events in `_start` (before the first), `_text`,
    `_tool_call`, `_finished` (the finish reason arrived) and `_close` (the last
    ones; it sets `_closed`).
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self.complete = False
        self._started = False
        self._closed = False
        self._saw_usage = False
        self._finish_reason: Any = None

    @property
    def ended(self) -> bool:
        """The client's stream has its last event: nothing the upstream sends later counts."""
        return self._closed

    def feed(self, chunk: Json) -> list[Event]:
        check_chunk(chunk)
        if self._closed:
            return []
        out = [] if self._started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
            self._saw_usage = True
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self.complete = True
                out += self._finished()
        if self.complete and self._saw_usage:
            out += self._close()
        return out

    def finish(self) -> list[Event]:
        out = [] if self._started else self._start({})
        if not self._closed:
            out += self._close()
        return out

    def _start(self, chunk: Json) -> list[Event]:
        raise NotImplementedError

    def _text(self, text: str) -> list[Event]:
        raise NotImplementedError

    def _tool_call(self, call: Json) -> list[Event]:
        raise NotImplementedError

    def _finished(self) -> list[Event]:
        return []

    def _close(self) -> list[Event]:
        raise NotImplementedError
