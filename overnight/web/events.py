"""The event hub: one tailer of the store's events for every open page, and the SSE streams.

Owns a single background thread that, every `POLL_S`, asks the store for events
newer than the last one seen, moves the live picture (`live.LiveRun`) forward,
has the pages' fragments rendered once for everybody, and hands the result to
every connected browser; the same thread mirrors the agents' terminals, refreshes
costs and asks the gateway for route health, but only as often as each needs and
only while somebody is watching. A browser that loses its connection reconnects
with `Last-Event-ID` and is sent what it missed from a replay buffer (or, if it
was away too long, told to re-fetch its fragments). Knows nothing about HTML
templates (it calls a `Renderer`) or about routing.

Event ids from PostgreSQL may commit out of order; the tailer keeps reading from
below a gap for `GAP_S` before giving up on the missing id (a rolled-back insert).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from overnight.records import IN_FLIGHT, Event
from overnight.web.live import Changes, LiveRun
from overnight.web.sources import Sources
from overnight.web.terminals import Mirror

log = logging.getLogger("overnight.web")

TOPICS = {
    "grid": {"agent", "screen", "status", "resync"},
    "lab": {"trial", "plot", "best", "status", "resync"},
    "providers": {"providers", "status", "resync"},
    "costs": {"costs", "status", "resync"},
    "approvals": {"approvals", "status", "resync"},
    "audit": {"status", "resync"},
    "notifications": {"status", "resync"},
}
"""Which messages each page listens to (a page's stream leaves out the rest)."""
NOTIFY = "notify.browser"
"""The browser sink's event (overnight.notify.browser): every page raises it as a desktop
notification, as a `notify` message."""
for _kinds in TOPICS.values():
    _kinds.add("notify")


@dataclass(frozen=True)
class Message:
    kind: str
    data: dict[str, Any]


class Renderer(Protocol):
    def messages(self, changes: Changes) -> list[Message]:
        """Fragments for what `changes` moved (called with the picture's lock held)."""

    def screen(self, agent: str, html: str) -> Message: ...

    def plot(self) -> Message: ...

    def providers(self, health: dict[str, Any] | None) -> Message: ...

    def costs(self) -> Message: ...

    def status(self) -> Message: ...


def encode(message: Message, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {message.kind}\ndata: {json.dumps(message.data)}\n\n".encode()


@dataclass
class _Batch:
    event_id: int | None
    """The last store event it reflects; None for terminal screens (no catch-up needed)."""
    parts: list[tuple[str, bytes]]
    """(message kind, encoded message)."""


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[_Batch | None]
    kinds: set[str]
    dropped: bool = False


@dataclass
class _Clock:
    every: float
    next: float = 0.0

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every
        return True


@dataclass
class Stats:
    """What the hub did, for the benchmark."""

    polls: int = 0
    batches: int = 0
    events: int = 0
    mirror_ticks: int = 0
    screens_sent: int = 0
    poll_s: list[float] = field(default_factory=list)


class Hub:
    POLL_S = 0.1
    MIRROR_S = 0.3
    USAGE_S = 5.0
    HEALTH_S = 2.0
    PLOT_S = 1.0
    """The plot is redrawn at most this often (10,000 points take ~20 ms)."""
    GAP_S = 3.0
    REPLAY = 5000
    """Batches kept for browsers that reconnect."""
    QUEUE = 2000
    """Batches a slow browser may fall behind before its stream is closed (it reconnects
    and catches up from the replay buffer)."""
    PAGE = 5000
    """Events read per store call."""

    def __init__(self, sources: Sources, live: LiveRun) -> None:
        self.sources = sources
        self.live = live
        self.renderer: Renderer | None = None
        self.mirror = (
            Mirror(sources.tmux, sources.terminals)
            if sources.tmux is not None and sources.terminals
            else None
        )
        self.health: dict[str, Any] | None = None
        self.usage_at = 0.0
        self.budget_rows: list[dict[str, Any]] = []
        self.stats = Stats()
        self._floor = 0
        """Every event id <= floor has been applied (or given up on)."""
        self._above: set[int] = set()
        """Ids > floor already applied."""
        self._gap_since: float | None = None
        self._replay: deque[_Batch] = deque()
        self._replay_lock = threading.Lock()
        self._covered_from = 0
        """The replay buffer holds every batch after this event id."""
        self._subs: set[_Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="web-events", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name="web-watch", daemon=True)
        self._attempts = -1
        self._plot_dirty = False
        self._plot_at = 0.0
        self._costs_dirty = False
        self._usage_clock = _Clock(self.USAGE_S)
        self._health_clock = _Clock(self.HEALTH_S)
        self._mirror_clock = _Clock(self.MIRROR_S)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self._thread.start()
        self._watcher.start()

    def close(self) -> None:
        self._closing.set()
        for thread in (self._thread, self._watcher):
            if thread.is_alive():
                thread.join(timeout=10)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._end_streams)

    def _end_streams(self) -> None:
        for sub in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the browsers' streams run on (the web server's)."""
        self._loop = loop

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self.failure = exc
            log.exception("the command center could not read the run")
            self.ready.set()
            return
        self.ready.set()
        while not self._closing.wait(self.POLL_S):
            try:
                self._poll()
            except Exception:
                # A locked database must not stop the page for the night.
                log.exception("the command center's event tailer failed; going on")

    def _watch(self) -> None:
        """Terminals, costs, route health and the throttled redraws, on a thread of their
        own so a slow tmux or gateway call never delays the events."""
        self.ready.wait()
        if self.failure is not None:
            return
        while not self._closing.wait(self.POLL_S):
            try:
                self._tick()
            except Exception:
                log.exception("the command center's watcher failed a tick; going on")

    def _load(self) -> None:
        store, run_id = self.sources.store, self.sources.run.id
        with self.live.lock:
            self.live.load(store.agents(run_id), store.trials(run_id))
        while True:
            batch = store.events(run_id, after=self._floor, limit=self.PAGE)
            if not batch:
                break
            with self.live.lock:
                self.live.apply(batch)
            self._floor = batch[-1].id
            if len(batch) < self.PAGE:
                break
        self._covered_from = self.live.last_id
        self._refresh_usage(force=True)

    # -- the tick -----------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        watched = bool(self._subs)
        if watched and self.mirror is not None and self._mirror_clock.due(now):
            self._mirror()
        if self._usage_clock.due(now):
            self._refresh_usage()
        if watched and self.sources.gateway_url and self._health_clock.due(now):
            self._refresh_health()
        if self._plot_dirty and now - self._plot_at >= self.PLOT_S:
            assert self.renderer is not None
            self._plot_dirty, self._plot_at = False, now
            with self.live.lock:
                message = self.renderer.plot()
            self._publish(_Batch(None, [(message.kind, encode(message))]))
        if self._costs_dirty and watched:
            self._costs_dirty = False
            assert self.renderer is not None
            with self.live.lock:
                message = self.renderer.costs()
            self._publish(_Batch(None, [(message.kind, encode(message))]))

    def _poll(self) -> None:
        started = time.perf_counter()
        store, run_id = self.sources.store, self.sources.run.id
        events = [
            e
            for e in store.events(run_id, after=self._floor, limit=self.PAGE)
            if e.id not in self._above
        ]
        self.stats.polls += 1
        if events:
            self._take(events)
        self.stats.poll_s.append(time.perf_counter() - started)
        if len(self.stats.poll_s) > 10_000:
            del self.stats.poll_s[:5000]

    def _take(self, events: Sequence[Event]) -> None:
        assert self.renderer is not None
        store, run_id = self.sources.store, self.sources.run.id
        unknown = {e.agent for e in events if e.agent and e.agent not in self.live.agents}
        refresh = [a for a in store.agents(run_id) if a.name in unknown] if unknown else []
        with self.live.lock:
            changes = self.live.apply(sorted(events, key=lambda e: e.id), refresh)
        if any(not self.live.trials[n].description for n in changes.trials):
            # a proposal's description is written without an event of its own
            with self.live.lock:
                more = self.live.set_descriptions(store.trials(run_id, statuses=IN_FLIGHT))
            changes.trials |= more
        self._advance(e.id for e in events)
        self.stats.events += len(events)
        if changes.finished:
            self._plot_dirty = True
        if changes.gateway and self.sources.gateway_url:
            self._health_clock.next = 0.0  # a breaker moved: look now
        with self.live.lock:
            messages = self.renderer.messages(changes)
            messages += [Message("notify", dict(e.payload)) for e in events if e.kind == NOTIFY]
            messages.append(self.renderer.status())
        parts = [(m.kind, encode(m)) for m in messages[:-1]]
        parts.append((messages[-1].kind, encode(messages[-1], self.live.last_id)))
        self._publish(_Batch(self.live.last_id, parts))

    def _advance(self, ids: Iterable[int]) -> None:
        self._above.update(ids)
        while self._floor + 1 in self._above:
            self._floor += 1
            self._above.discard(self._floor)
        if not self._above:
            self._gap_since = None
            return
        now = time.monotonic()
        if self._gap_since is None:
            self._gap_since = now
        elif now - self._gap_since > self.GAP_S:
            # the missing id never committed (a rolled-back insert): stop waiting for it
            self._floor = min(self._above) - 1
            self._gap_since = None
            self._advance(())

    def _mirror(self) -> None:
        assert self.mirror is not None and self.renderer is not None
        self.stats.mirror_ticks += 1
        changed = self.mirror.tick()
        if changed:
            self.stats.screens_sent += len(changed)
            parts = []
            for agent, html in changed.items():
                message = self.renderer.screen(agent, html)
                parts.append((message.kind, encode(message)))
            self._publish(_Batch(None, parts))

    def _refresh_usage(self, force: bool = False) -> None:
        # the rollup's count first: reading every attempt (a million, by morning) only to
        # learn that none is new held the page's thread up for seconds
        count = self.sources.attempt_count()
        if count == self._attempts and not force:
            return
        rows = self.sources.usage()
        self._attempts = count
        self.budget_rows = self.sources.budgets()
        with self.live.lock:
            moved = self.live.set_usage(rows)
        self.usage_at = time.time()
        self._costs_dirty = True
        if moved and self.renderer is not None and not force:
            with self.live.lock:
                messages = self.renderer.messages(Changes(agents=moved))
            self._publish(_Batch(None, [(m.kind, encode(m)) for m in messages]))

    def _refresh_health(self) -> None:
        assert self.renderer is not None
        health = self.sources.gateway_health()
        if health is not None:
            health.pop("read_at", None)
        if health == self.health:
            return
        self.health = health
        with self.live.lock:
            message = self.renderer.providers(health)
        self._publish(_Batch(None, [(message.kind, encode(message))]))

    # -- fan-out ------------------------------------------------------------------------

    def _publish(self, batch: _Batch) -> None:
        self.stats.batches += 1
        if batch.event_id is not None:
            with self._replay_lock:
                self._replay.append(batch)
                if len(self._replay) > self.REPLAY:
                    dropped = self._replay.popleft()
                    self._covered_from = dropped.event_id or self._covered_from
        loop = self._loop
        if loop is None or not self._subs:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server stopped
            loop.call_soon_threadsafe(self._fan_out, batch)

    def _fan_out(self, batch: _Batch) -> None:
        for sub in list(self._subs):
            if sub.dropped:
                continue
            try:
                sub.queue.put_nowait(batch)
            except asyncio.QueueFull:
                sub.dropped = True  # its stream ends; the browser reconnects and catches up

    def _since(self, after: int) -> list[_Batch] | None:
        """Batches after event `after`, or None when the buffer no longer reaches back."""
        with self._replay_lock:
            if after < self._covered_from:
                return None
            return [b for b in self._replay if (b.event_id or 0) > after]

    async def stream(
        self, view: str, after: int | None, reconnect: bool, screens: Callable[[], list[Message]]
    ) -> AsyncIterator[bytes]:
        """One browser's stream: catch-up first, then everything new, as SSE bytes."""
        kinds = TOPICS.get(view, set().union(*TOPICS.values()))
        sub = _Subscriber(asyncio.Queue(maxsize=self.QUEUE), kinds)
        self._subs.add(sub)
        self._mirror_clock.next = 0.0  # a new watcher gets fresh screens now
        try:
            yield b"retry: 1000\n\n"
            sent = after if after is not None else self.live.last_id
            if after is not None:
                missed = self._since(after)
                if missed is None:
                    assert self.renderer is not None
                    with self.live.lock:
                        resync = self.renderer.status()
                    yield encode(Message("resync", {}))
                    yield encode(resync, self.live.last_id)
                    sent = self.live.last_id
                else:
                    for old in missed:
                        yield _filtered(old, kinds)
                        sent = max(sent, old.event_id or 0)
            if reconnect and "screen" in kinds:
                for message in screens():
                    yield encode(message)
            while True:
                try:
                    batch = await asyncio.wait_for(sub.queue.get(), timeout=15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if batch is None or sub.dropped:
                    return
                if batch.event_id is not None:
                    if batch.event_id <= sent:
                        continue
                    sent = batch.event_id
                chunk = _filtered(batch, kinds)
                if chunk:
                    yield chunk
        finally:
            self._subs.discard(sub)


def _filtered(batch: _Batch, kinds: set[str]) -> bytes:
    return b"".join(data for kind, data in batch.parts if kind in kinds)
