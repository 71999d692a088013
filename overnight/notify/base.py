"""What every sink shares: the message it is handed, the error it raises, and the registry.

Owns `Message` (one notification, or a digest of several), `Sink` (the small base
every kind of sink implements: `send` a message, return what the other end
answered, raise `DeliveryError` saying why not), `SINKS` (kind -> class; the
built-ins register with `sink` as a plugin would) and `read_secret`, which reads
an address or password from the environment variable or file a `[[notify]]`
field names. A sink's address and password live in its memory only, registered
with `overnight.redaction`. Knows nothing about the store, retries or digests.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from overnight import redaction
from overnight.errors import ConfigError
from overnight.gateway.config import Secret
from overnight.org.notify import SinkConfig


class DeliveryError(Exception):
    """A try that did not reach the other end, or was refused; `str()` says why (never
    the sink's address)."""


@dataclass(frozen=True)
class Item:
    """One notification inside a message."""

    kind: str
    title: str
    text: str
    link: str | None = None


@dataclass(frozen=True)
class Message:
    """What one send carries: one notification, or a digest of several (`items`)."""

    lab: str
    run_id: str | None
    items: tuple[Item, ...]
    base_url: str | None = None
    """The command center's address (without its token), for links that are paths."""
    attachments: tuple[Path, ...] = field(default=())

    DIGEST_LINES = 20

    @property
    def kind(self) -> str:
        kinds = {i.kind for i in self.items}
        return kinds.pop() if len(kinds) == 1 and len(self.items) == 1 else "digest"

    @property
    def title(self) -> str:
        if len(self.items) == 1:
            return self.items[0].title
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        what = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return f"{len(self.items)} notifications ({what})"

    @property
    def text(self) -> str:
        """The body: the notification's text (and link), or one line per notification."""
        if len(self.items) == 1:
            item = self.items[0]
            link = self.url(item.link)
            return item.text + (f"\n{link}" if link else "")
        lines = [f"- {i.title}" for i in self.items[: self.DIGEST_LINES]]
        if len(self.items) > self.DIGEST_LINES:
            lines.append(f"- and {len(self.items) - self.DIGEST_LINES} more")
        link = self.url(self.items[-1].link)
        return "\n".join(lines) + (f"\n{link}" if link else "")

    @property
    def link(self) -> str | None:
        return self.url(self.items[-1].link) if self.items else None

    def url(self, link: str | None) -> str | None:
        """A link as a person can follow it: a path of the command center joined to its
        address (None when it does not run), a `file://` URL (the morning report) or any
        other URL as it is."""
        if not link:
            return None
        if link.startswith("/"):
            return None if self.base_url is None else self.base_url.rstrip("/") + link
        return link

    @property
    def headline(self) -> str:
        return f"overnight · {self.lab}: {self.title}"


class Sink:
    """A place notifications go. Subclasses register with `@sink("kind")`."""

    kind = ""

    def __init__(self, name: str, config: SinkConfig, secrets: Mapping[str, Secret]) -> None:
        self.name = name
        self.config = config
        self.secrets = secrets

    def send(self, message: Message) -> str:
        """Deliver `message` (one try, within `config.timeout`); return the answer."""
        raise NotImplementedError

    def where(self) -> str:
        """Where it sends, as may be shown: a URL's host, never its path or token."""
        return self.kind


SINKS: dict[str, type[Sink]] = {}


def sink(kind: str) -> Callable[[type[Sink]], type[Sink]]:
    def register(cls: type[Sink]) -> type[Sink]:
        cls.kind = kind
        SINKS[kind] = cls
        return cls

    return register


def host_of(url: str) -> str:
    """The host (and port) of a URL: what may be shown of an address that holds a token."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or "?"


def read_secret(
    config: SinkConfig,
    what: str,
    sink_name: str,
    config_file: Path | str,
    environ: Mapping[str, str] | None = None,
) -> Secret | None:
    """The value of `what` (`url`, `token`, `password`) from the sink's `<what>_env` or
    `<what>_file` (or, for `url`, the field itself); None when the sink gives none.
    A missing variable or unreadable file is a ConfigError naming the field and fix."""
    environ = os.environ if environ is None else environ
    env, file = getattr(config, f"{what}_env"), getattr(config, f"{what}_file")
    plain = getattr(config, what, None) if what == "url" else None
    where = f"notify[{sink_name}]"
    if plain is not None:
        value = plain
    elif env is not None:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                config_file,
                f"environment variable {env} is not set (sink {sink_name!r} reads its {what})",
                field=f"{where}.{what}_env",
                fix=f"export {env}=... before starting, or use {what}_file = instead",
            )
    elif file is not None:
        path = Path(file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                config_file,
                f"cannot read {str(path)!r}, the {what} of sink {sink_name!r} ({exc.strerror})",
                field=f"{where}.{what}_file",
                fix=f"write the {what} into that file, or use {what}_env = instead",
            ) from None
        if not value:
            raise ConfigError(
                config_file,
                f"{str(path)!r}, the {what} of sink {sink_name!r}, is empty",
                field=f"{where}.{what}_file",
                fix=f"write the {what} into that file",
            )
    else:
        return None
    if what == "url":
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                config_file,
                f"the {what} of sink {sink_name!r} is not an http:// or https:// URL",
                field=f"{where}.{what}" + ("_env" if env else "_file" if file else ""),
                fix="give the whole address, e.g. https://hooks.slack.com/services/...",
            )
        # a token may sit in the path or the query: neither is ever written down
        redaction.register(parts.path + (f"?{parts.query}" if parts.query else ""))
        redaction.register(parts.query, parts.password)
    return Secret(value)
