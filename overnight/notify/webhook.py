"""The webhook sink: a JSON POST, overnight's own fields or Slack's `{"text": ...}`.

Owns the two bodies and the POST. `format = "json"` sends the lab, the run, the
event, title, text and link, and each notification of a digest; `format =
"slack"` sends `text` (with `blocks` for Slack itself), which Slack-compatible
endpoints (Mattermost, Discord's `/slack`, Rocket.Chat, ...) accept. Knows nothing
about retries or the store.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from overnight.notify.base import DeliveryError, Message, Sink, host_of, sink


def body(message: Message, form: str) -> dict[str, Any]:
    if form == "slack":
        text = f"*{message.headline}*\n{message.text}"
        return {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        }
    return {
        "lab": message.lab,
        "run": message.run_id,
        "event": message.kind,
        "title": message.title,
        "text": message.text,
        "link": message.link,
        "notifications": [
            {"event": i.kind, "title": i.title, "text": i.text, "link": message.url(i.link)}
            for i in message.items
        ],
    }


def post(url: str, data: bytes, headers: dict[str, str], timeout: float) -> str:
    """POST `data`; the answer (`HTTP 200`), or DeliveryError with the status or the
    connection's error (never the URL)."""
    request = urllib.request.Request(url, data, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        said = exc.read(200).decode("utf-8", "replace").strip()
        exc.close()
        raise DeliveryError(f"HTTP {exc.code}" + (f": {said}" if said else "")) from None
    except urllib.error.URLError as exc:
        raise DeliveryError(str(exc.reason)) from None
    except (OSError, ValueError) as exc:
        raise DeliveryError(str(exc) or type(exc).__name__) from None


@sink("webhook")
class WebhookSink(Sink):
    def send(self, message: Message) -> str:
        url = self.secrets["url"].reveal()
        data = json.dumps(body(message, self.config.format or "json")).encode()
        headers = {"content-type": "application/json", "user-agent": "overnight"}
        return post(url, data, headers, self.config.timeout)

    def where(self) -> str:
        return host_of(self.secrets["url"].reveal())
