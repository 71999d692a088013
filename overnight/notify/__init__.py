"""Notifications: the night watch that tells a sleeping user what their lab did.

Owns following a run's events for what a person would want to hear of (`watch`),
the sinks they are told through, one class each in a registry (`base.SINKS`:
`webhook`, `ntfy`, `email`, `browser`), delivery that is paced, digested, retried
and recorded in the store without ever holding up the lab (`courier`), and the
notifier that joins them for a running lab (`service`). The `[[notify]]` tables
it reads are org code's (`overnight.org.notify`). Knows nothing about the CLI,
the web page or the daemon, which only start it and show what it stored.
"""

from __future__ import annotations

from overnight.notify import browser, ntfy, smtp, webhook
from overnight.notify.base import SINKS, DeliveryError, Message, Sink
from overnight.notify.service import Answer, Notifier, lab_notifier, sinks_of, test

__all__ = [
    "SINKS",
    "Answer",
    "DeliveryError",
    "Message",
    "Notifier",
    "Sink",
    "browser",
    "lab_notifier",
    "ntfy",
    "sinks_of",
    "smtp",
    "test",
    "webhook",
]
