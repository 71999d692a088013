"""The ntfy sink: a POST to a topic URL, which ntfy pushes to the phones subscribed to it.

Owns ntfy's headers: the title, a priority (high for what needs a person: a
crash, a stuck agent, a spent budget, an approval), tags shown as emoji, the link
a tap opens, and the bearer token of a protected topic. Knows nothing about
retries or the store.
"""

from __future__ import annotations

import base64

from overnight.notify.base import Message, Sink, host_of, sink
from overnight.notify.webhook import post

URGENT = {"crash", "stuck", "crash_streak", "budget", "approval"}
TAGS = {
    "best": "chart_with_upwards_trend", "crash": "boom", "stuck": "hourglass",
    "crash_streak": "boom", "brownout": "cloud", "budget": "moneybag",
    "approval": "raised_hand", "cost_anomaly": "moneybag", "stopped": "checkered_flag",
    "test": "wave", "digest": "bell",
}  # fmt: skip


def header(value: str) -> str:
    """A header value; RFC 2047 for anything beyond ASCII (ntfy decodes it)."""
    if value.isascii():
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


@sink("ntfy")
class NtfySink(Sink):
    def send(self, message: Message) -> str:
        kinds = {i.kind for i in message.items}
        headers = {
            "Title": header(message.headline),
            "Priority": "high" if kinds & URGENT else "default",
            "Tags": TAGS.get(message.kind, "bell"),
            "content-type": "text/plain; charset=utf-8",
            "user-agent": "overnight",
        }
        link = message.link
        if link and link.startswith(("http://", "https://")):
            headers["Click"] = link
        token = self.secrets.get("token")
        if token is not None:
            headers["Authorization"] = f"Bearer {token.reveal()}"
        url = self.secrets["url"].reveal()
        return post(url, message.text.encode(), headers, self.config.timeout)

    def where(self) -> str:
        return host_of(self.secrets["url"].reveal())
