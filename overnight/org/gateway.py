"""The `[gateway]` table of `overnight.toml`, as frozen pydantic models.

Owns field names, defaults and the checks that need nothing but the file (an
upstream's `proxy =` URL included, parsed here for the gateway to use). Part of
org code, so the configuration can be read, checked and shown without the
gateway: reading the credentials it names, routing and serving are
`overnight.gateway`'s.
"""

from __future__ import annotations

import base64
import difflib
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from overnight.errors import Invalid
from overnight.units import PositiveDuration as Duration
from overnight.units import Size

Protocol = Literal["anthropic", "openai"]
USD = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    # TOML can say inf and nan; no setting here means either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CredentialConfig(_Model):
    """Where one secret comes from: an environment variable or a file, read at start."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    env: str | None = None
    file: str | None = None
    auth: Literal["x-api-key", "bearer"] | None = None
    """How the secret is sent; default `x-api-key` for Anthropic, `bearer` for OpenAI.
    Anthropic OAuth tokens need `bearer`."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise Invalid(
                f"credential {self.name!r} has "
                + ("both env and file" if self.env is not None else "neither env nor file"),
                fix='say where its secret is with exactly one of env = "ANTHROPIC_API_KEY" '
                '(an environment variable) or file = "~/.config/keys/anthropic" (a file)',
                at=("file",) if self.env is not None else (),
            )
        return self


class UpstreamConfig(_Model):
    """A provider (or a local OpenAI-compatible server) and the credentials to call it."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    protocol: Protocol
    base_url: str
    """The server's root, e.g. `https://api.anthropic.com`; a trailing `/v1` is accepted."""
    credentials: list[CredentialConfig] = []
    """Empty for a local server that takes no key."""
    responses_api: bool = True
    """OpenAI only: the server speaks `/v1/responses` itself (false: Responses requests
    are translated to Chat Completions, as most local servers need)."""
    ca_file: str | None = None
    """https only: a PEM file of the CA certificates to verify the server against, instead
    of the system's store (which `SSL_CERT_FILE` / `SSL_CERT_DIR` can replace)."""
    proxy: str | None = None
    """An `http://[user:password@]host:port` proxy for this upstream, or "" for none;
    unset: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` from the environment decide."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise Invalid(
                f"base_url {self.base_url!r} of upstream {self.name!r} is not an http:// or "
                "https:// URL",
                fix='write the server\'s whole address, e.g. base_url = "https://api.anthropic.com"',
                at=("base_url",),
            )
        if self.ca_file is not None and not self.base_url.startswith("https://"):
            raise Invalid(
                f"ca_file is set on upstream {self.name!r}, whose base_url is not https://",
                fix="remove ca_file (it verifies https servers only), or use an https:// base_url",
                at=("ca_file",),
            )
        if self.proxy:
            try:
                parse_proxy(self.proxy)
            except ValueError as exc:
                raise Invalid(
                    f"proxy of upstream {self.name!r}: {exc}",
                    fix='write it as proxy = "http://host:port", or proxy = "" for none',
                    at=("proxy",),
                ) from None
        first: dict[str, int] = {}
        for i, credential in enumerate(self.credentials):
            if credential.name in first:
                raise Invalid(
                    f"upstream {self.name!r} has two credentials named {credential.name!r}",
                    fix="give each [[gateway.upstreams.credentials]] a name of its own",
                    at=("credentials", i, "name"),
                    first=("credentials", first[credential.name], "name"),
                )
            first[credential.name] = i
        return self

    @property
    def root(self) -> str:
        """`base_url` without a trailing slash or `/v1`: paths such as `/v1/messages` follow."""
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url


class TimeoutsConfig(_Model):
    connect: Duration = 10.0
    first_byte: Duration = 300.0
    """From sending a request to its first byte of answer (a whole non-streamed answer
    may take minutes to start)."""
    idle: Duration = 60.0
    """Longest silence between two chunks of an answer before it counts as stalled."""


class BreakerConfig(_Model):
    failures: int = Field(default=5, ge=1)
    """Consecutive failures of one credential that open its breaker."""
    cooldown: Duration = 30.0
    """How long an open breaker waits before letting one probe through."""
    max_cooldown: Duration = 600.0
    """Each failed probe doubles the wait, up to this."""


class LimitConfig(_Model):
    daily_usd: USD | None = None
    """Spend per UTC day."""
    total_usd: USD | None = None


class BudgetsConfig(_Model):
    org: LimitConfig = LimitConfig()
    agent: LimitConfig = LimitConfig()
    """The default for every agent."""
    agents: dict[str, LimitConfig] = {}
    """Per-agent limits that replace the default."""
    default_max_tokens: int = Field(default=8192, ge=1)
    """Output tokens assumed for a request that sets no maximum, when reserving budget."""


class PriceConfig(_Model):
    """USD per million tokens; the cache prices default to the input price."""

    input: USD
    output: USD
    cache_read: USD | None = None
    cache_write: USD | None = None


class GatewayConfig(_Model):
    """The whole `[gateway]` table."""

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    upstreams: list[UpstreamConfig] = []
    models: dict[str, list[str]] = {}
    """Alias -> ordered `upstream/model` candidates; the alias `*` catches every other name."""
    timeouts: TimeoutsConfig = TimeoutsConfig()
    breaker: BreakerConfig = BreakerConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    prices: dict[str, PriceConfig] = {}
    """Overrides of the shipped price table, by model name or `upstream/model`."""
    max_body: Size = 32 * 2**20

    @model_validator(mode="after")
    def _check(self) -> Self:
        first: dict[str, int] = {}
        for i, name in enumerate(u.name for u in self.upstreams):
            if name in first:
                raise Invalid(
                    f"upstream name {name!r} is used twice",
                    fix="give each [[gateway.upstreams]] a name of its own",
                    at=("upstreams", i, "name"),
                    first=("upstreams", first[name], "name"),
                )
            first[name] = i
        names = list(first)
        example = f"{names[0] if names else 'anthropic'}/model-name"
        for alias, candidates in self.models.items():
            if not candidates:
                raise Invalid(
                    f"model route {alias!r} lists no candidates",
                    fix=f'list at least one "upstream/model", e.g. {alias} = ["{example}"]',
                    at=("models", alias),
                )
            for candidate in candidates:
                upstream, _, model = candidate.partition("/")
                if not model:
                    raise Invalid(
                        f"model route {alias!r}: candidate {candidate!r} does not say which "
                        "upstream serves it",
                        fix=f'write it as "upstream/model", e.g. "{example}"',
                        at=("models", alias),
                    )
                if upstream not in names:
                    close = difflib.get_close_matches(upstream, names, n=1)
                    raise Invalid(
                        f"model route {alias!r}: candidate {candidate!r} names the upstream "
                        f"{upstream!r}, and there is none by that name",
                        fix=f"did you mean {close[0] + '/' + model!r}?"
                        if close
                        else f"name one of the upstreams ({', '.join(names)}), e.g. "
                        f'"{names[0]}/{model}", or add a [[gateway.upstreams]] named {upstream!r}'
                        if names
                        else f"add a [[gateway.upstreams]] named {upstream!r}",
                        at=("models", alias),
                    )
        return self

    def upstream(self, name: str) -> UpstreamConfig:
        return next(u for u in self.upstreams if u.name == name)


# -- an upstream's proxy, as `proxy =` writes it ------------------------------------


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy; `str()` is its URL without credentials (safe to log)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)
    """The `Proxy-Authorization` header's value, from `user:password@` in the URL."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """A proxy from `http://[user:password@]host[:port]` (`host:port` alone is accepted).

    ValueError says what is wrong; only plain-HTTP proxies are supported (an https
    origin is still end-to-end TLS through one, by CONNECT).
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"{parts.scheme}:// proxies are not supported ({_safe(url)}); use an http:// proxy"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"bad port in proxy URL {_safe(url)}") from None
    if not parts.hostname:
        raise ValueError(f"no host in proxy URL {_safe(url)}")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(parts.hostname, port, authorization)


def _safe(url: str) -> str:
    """A proxy URL with any password hidden."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
