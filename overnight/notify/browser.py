"""The browser sink: a desktop notification from every open command center tab.

Delivering is writing a `notify.browser` event to the store; the command center
streams it to its pages, which raise it through the browser's Notification API
(when the person allowed it, from the Notifications page). So it reaches a tab
open on any machine that watches this lab, and none when none is open. Knows
nothing about pages or HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from overnight.notify.base import DeliveryError, Message, Sink, sink

EVENT = "notify.browser"
Post = Callable[[str, Mapping[str, Any]], None]
"""(run id, payload) -> the event written."""


@sink("browser")
class BrowserSink(Sink):
    post: Post | None = None
    """Set by the notifier: how an event reaches the store."""

    def send(self, message: Message) -> str:
        if self.post is None or message.run_id is None:
            raise DeliveryError("no run to post to: start one with `overnight run`")
        link = message.items[-1].link if message.items else None
        self.post(
            message.run_id,
            {
                "title": message.headline,
                "body": message.text,
                "event": message.kind,
                "link": link if link and link.startswith("/") else None,
                "at": time.time(),
            },
        )
        return "posted to the command center's open pages"

    def where(self) -> str:
        return "the command center"
