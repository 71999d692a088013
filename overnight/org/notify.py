"""The `[[notify]]` tables of `overnight.toml`: where the night watch sends what it sees.

Owns the sink's fields, their defaults and the checks that need nothing but the
file: which fields belong to which kind of sink, that an address is given once
and is an http(s) URL, that the events named exist. Also folds the older
`[governance] webhook` in as one more sink (Slack-formatted, approvals only).
Reading the secrets the fields name (`url_env`, `password_file`, ...) and
delivering are `overnight.notify`'s; a sink's address never leaves its memory.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from overnight.errors import Invalid
from overnight.units import Duration, PositiveDuration

EVENTS = (
    "best", "crash", "stuck", "crash_streak", "brownout", "budget", "approval",
    "cost_anomaly", "stopped",
)  # fmt: skip
"""What a sink may be told of (its `events = [...]`); every one when it names none."""
SinkKind = Literal["webhook", "ntfy", "email", "browser"]
_COMMON = {"kind", "name", "events", "min_interval", "stuck_after", "tries", "backoff", "timeout"}
_EMAIL = "host port security username password_env password_file from to ca_file"
_FIELDS: dict[str, set[str]] = {
    "webhook": {"url", "url_env", "url_file", "format"},
    "ntfy": {"url", "url_env", "url_file", "token_env", "token_file"},
    "email": set(_EMAIL.split()),
    "browser": set(),
}
_EXAMPLE = {
    "webhook": 'url_env = "SLACK_WEBHOOK_URL"',
    "ntfy": 'url = "https://ntfy.sh/your-topic"',
    "email": 'host = "smtp.example.com", from = "overnight@example.com", to = ["you@example.com"]',
    "browser": "nothing more",
}
LEGACY_WEBHOOK = "governance.webhook"
"""The name the `[governance] webhook` sink goes by."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SinkConfig(_Model):
    """One `[[notify]]` table: a place to send notifications, and what to send it."""

    kind: SinkKind
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """How the page and the store call it (default: its kind, then kind-2, ...)."""
    events: list[str] | None = None
    """Which of EVENTS it hears of; all when unset."""
    min_interval: Duration = 60.0
    """At most one message per this long: what comes sooner waits and goes as one digest."""
    stuck_after: PositiveDuration = 1800.0
    """An agent with no turn and no trial for this long is stuck."""
    tries: int = Field(default=5, ge=1, le=20)
    backoff: PositiveDuration = 2.0
    """The pause after a failed try; it doubles after each, up to 5 minutes."""
    timeout: PositiveDuration = 10.0
    """How long one try may take."""
    # webhook and ntfy: the address, which may hold a token (then from env or a file)
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    format: Literal["json", "slack"] | None = None
    """webhook: `json` (overnight's own fields) or `slack` (`{"text": ...}`)."""
    # ntfy: an access token for a protected topic
    token_env: str | None = None
    token_file: str | None = None
    # email
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    sender: str | None = Field(default=None, alias="from")
    to: list[str] = []
    ca_file: str | None = None
    """A PEM file of the CA certificates to verify the SMTP server against."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        allowed = _COMMON | _FIELDS[self.kind]
        given = {"from" if name == "sender" else name for name in self.model_fields_set}
        for name in sorted(given - allowed):
            owners = [k for k, fields in _FIELDS.items() if name in fields]
            raise Invalid(
                f"{name} is not a field of a{'n' if self.kind == 'email' else ''} {self.kind} sink"
                + (f" (it belongs to {' and '.join(owners)} sinks)" if owners else ""),
                fix=f"remove it; a {self.kind} sink needs {_EXAMPLE[self.kind]}",
                at=(name,),
            )
        for i, event in enumerate(self.events or []):
            if event not in EVENTS:
                close = difflib.get_close_matches(event, EVENTS, n=1)
                raise Invalid(
                    f"{event!r} is not an event a sink can hear of",
                    fix=(f"did you mean {close[0]!r}? " if close else "")
                    + f"name some of: {', '.join(EVENTS)}",
                    at=("events", i),
                )
        if self.kind in ("webhook", "ntfy"):
            self._one_source("url", 'url_env = "WEBHOOK_URL"', required=True)
            if self.url is not None and not re.match(r"^https?://[^/\s]+\S*$", self.url):
                example = "ntfy.sh/your-topic" if self.kind == "ntfy" else "example.com/hook"
                raise Invalid(
                    f"{self.url!r} is not an http:// or https:// URL",
                    fix=f'write the whole address, e.g. url = "https://{example}"',
                    at=("url",),
                )
            self._one_source("token", 'token_env = "NTFY_TOKEN"', required=False)
        if self.kind == "email":
            for name, example in (
                ("host", 'host = "smtp.example.com"'),
                ("sender", 'from = "overnight@example.com"'),
            ):
                if getattr(self, name) is None:
                    shown = "from" if name == "sender" else name
                    raise Invalid(f"an email sink needs {shown}", fix=f"add {example}", at=(shown,))
            if not self.to:
                raise Invalid(
                    "an email sink needs someone to write to",
                    fix='add to = ["you@example.com"]',
                    at=("to",),
                )
            has_password = self._one_source("password", 'password_env = "SMTP_PASSWORD"', False)
            if has_password != (self.username is not None):
                raise Invalid(
                    "a password is given without a username"
                    if has_password
                    else f"username {self.username!r} is given without a password",
                    fix='give both, e.g. username = "me" and password_env = "SMTP_PASSWORD", '
                    "or neither (a relay that takes mail without a login)",
                    at=("username",)
                    if self.username is not None
                    else ("password_env" if self.password_env else "password_file",),
                )
        return self

    def _one_source(self, what: str, example: str, required: bool) -> bool:
        """Whether `what` (`url`, `token`, `password`) is given, checking it is given once."""
        names = [f"{what}_env", f"{what}_file"] + (["url"] if what == "url" else [])
        given = [n for n in names if getattr(self, n) is not None]
        if len(given) > 1:
            raise Invalid(
                f"{' and '.join(given)} are both set",
                fix=f"keep one of them, e.g. {example}",
                at=(given[-1],),
            )
        if required and not given:
            raise Invalid(
                f"a {self.kind} sink needs its address",
                fix=f"add {example} (an environment variable holding the URL; url_file = a "
                "file holding it; url = the URL itself, when it holds no token)",
            )
        return bool(given)

    def hears(self, kind: str) -> bool:
        return kind == "test" or self.events is None or kind in self.events

    @property
    def port_or_default(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]


def check_names(sinks: list[SinkConfig]) -> None:
    """Names given to two sinks."""
    first: dict[str, int] = {}
    for i, sink in enumerate(sinks):
        if sink.name is None:
            continue
        if sink.name in first:
            raise Invalid(
                f"sink name {sink.name!r} is used twice",
                fix="give each [[notify]] a name of its own",
                at=("notify", i, "name"),
                first=("notify", first[sink.name], "name"),
            )
        first[sink.name] = i


def named_sinks(
    sinks: list[SinkConfig], webhook: str | None = None
) -> list[tuple[str, SinkConfig]]:
    """Every sink with its name: the `[[notify]]` tables (unnamed ones after their kind:
    `webhook`, `webhook-2`, ...) and the `[governance] webhook`, told of approvals."""
    taken = {s.name for s in sinks if s.name}
    out: list[tuple[str, SinkConfig]] = []
    for sink in sinks:
        name = sink.name
        if name is None:
            name, n = sink.kind, 1
            while name in taken:
                n += 1
                name = f"{sink.kind}-{n}"
            taken.add(name)
        out.append((name, sink))
    if webhook:
        legacy = SinkConfig.model_validate(
            {"kind": "webhook", "url": webhook, "format": "slack", "events": ["approval"],
             "min_interval": 0},
        )  # fmt: skip
        out.append((LEGACY_WEBHOOK, legacy))
    return out
