"""One sink's courier: a thread that delivers its queued notifications, never the lab's.

Owns pacing and retries. Notifications wait in the store (`queued`) until the
courier takes them: at most one message per `min_interval` (what comes sooner
goes together as one digest; a burst is gathered for up to a second first),
each message tried `tries` times with a pause that doubles from `backoff` (up to
5 minutes), every try's outcome written to the store (`delivered` with the
answer, or the error and, after the last try, `failed`). While a message waits
to be retried, new notifications queue behind it and go as the next digest: a
dead sink costs one thread and a few rows, never a trial. Knows nothing about
events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from overnight.notify.base import DeliveryError, Item, Message, Sink
from overnight.records import Notification
from overnight.store import Store

log = logging.getLogger("overnight.notify")

GATHER_S = 1.0
"""A burst (a storm of crashes) is gathered this long before its first message goes."""
MAX_BACKOFF_S = 300.0
BATCH = 10_000
"""Notifications one message may carry (a digest lists the first lines only)."""


def attachments(rows: Sequence[Notification]) -> tuple[Path, ...]:
    """The files a message carries: the morning report a notification links to, and its
    progress plot."""
    out: list[Path] = []
    for row in rows:
        link = row.notice.link
        if link and link.startswith("file://"):
            path = Path(urllib.parse.unquote(urllib.parse.urlsplit(link).path))
            plot = path.with_name(path.stem + "-progress.png")
            out += [p for p in (path, plot) if p.is_file() and p not in out]
    return tuple(out)


def message_of(lab: str, rows: Sequence[Notification], base_url: str | None) -> Message:
    items = tuple(Item(r.notice.kind, r.notice.title, r.notice.text, r.notice.link) for r in rows)
    return Message(lab, rows[-1].notice.run_id, items, base_url, attachments(rows))


class Courier:
    """Delivers one sink's notifications of one lab, on a thread of its own."""

    def __init__(
        self, store: Store, lab: str, sink: Sink, base_url: Callable[[], str | None]
    ) -> None:
        self.store = store
        self.lab = lab
        self.sink = sink
        self.base_url = base_url
        config = sink.config
        self.min_interval = config.min_interval
        self.gather = min(GATHER_S, config.min_interval)
        self._last = -math.inf
        self.failing = False
        """Its last try failed: a stopping run does not wait long for it."""
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"overnight-notify-{sink.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Notifications were queued for this sink."""
        self._wake.set()

    def close(self, deadline: float) -> None:
        """Send what is queued now (one try each, `min_interval` no longer waited for),
        and stop; gives up waiting at `deadline` (time.monotonic())."""
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _queued(self) -> list[Notification]:
        return self.store.notifications(
            self.lab, sink=self.sink.name, statuses=["queued"], limit=BATCH
        )

    def _main(self) -> None:
        while True:
            try:
                self._wake.clear()
                rows = self._queued()
                if not rows:
                    if self._closing.is_set():
                        return
                    self._wake.wait()
                    continue
                if not self._closing.is_set():
                    now = time.monotonic()
                    due = max(now + self.gather, self._last + self.min_interval)
                    self._closing.wait(max(0.0, due - now))
                    rows = self._queued()
                self.deliver(rows)
                self._last = time.monotonic()
            except Exception:
                # a locked database, a bug of ours: the lab must not notice; try again
                log.exception("notify: sink %s: the courier failed a round", self.sink.name)
                if self._closing.wait(1.0):
                    return

    def deliver(self, rows: Sequence[Notification]) -> bool:
        """One message carrying `rows`, tried until it goes, the tries run out or the
        courier closes; each try recorded. Whether it was delivered."""
        sink, config = self.sink, self.sink.config
        ids = [r.id for r in rows]
        message = message_of(self.lab, rows, self.base_url())
        attempt = 0
        while True:
            attempt += 1
            last_chance = self._closing.is_set()
            try:
                answer = sink.send(message)
            except DeliveryError as exc:
                error = str(exc)
            except Exception as exc:  # a sink's bug must not end its courier
                log.exception("notify: sink %s failed unexpectedly", sink.name)
                error = f"{type(exc).__name__}: {exc}"
            else:
                self.failing = False
                self.store.settle_notifications(ids, "delivered", tries=attempt, answer=answer)
                return True
            self.failing = True
            final = attempt >= config.tries or last_chance
            if final and attempt < config.tries:
                error += "; overnight stopped before the next try"
            self.store.settle_notifications(
                ids, "failed" if final else "queued", tries=attempt, error=error
            )
            log.warning(
                "notify: sink %s (%s): try %d of %d failed: %s",
                sink.name, sink.where(), attempt, config.tries, error,
            )  # fmt: skip
            if final:
                return False
            self._closing.wait(min(config.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S))
