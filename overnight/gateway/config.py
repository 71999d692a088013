"""The `[gateway]` table of `overnight.toml`, as frozen pydantic models, and its secrets.

Owns field names, defaults, the checks that need nothing but the file, and
reading credentials from environment variables or files when the gateway
starts. Knows nothing about HTTP, routing state or the store: a secret lives
only in the running gateway's memory, wrapped so it never prints.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from overnight import redaction
from overnight.errors import ConfigError, Invalid
from overnight.gateway.proxies import parse_proxy
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


class Secret:
    """A credential's value; never shown by `repr`, `str` or a log line, and redacted from
    whatever overnight writes (`overnight.redaction`) should it show up there anyway."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redaction.register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_secret(
    upstream: str,
    credential: CredentialConfig,
    environ: Mapping[str, str] | None = None,
    config_file: str = "overnight.toml",
) -> Secret:
    """The secret of one credential; a `ConfigError` naming the upstream and source if absent."""
    environ = os.environ if environ is None else environ
    field = f"gateway.upstreams[{upstream}].credentials[{credential.name}]"
    if credential.env is not None:
        value = environ.get(credential.env, "").strip()
        if not value:
            raise ConfigError(
                config_file,
                f"environment variable {credential.env} is not set (needed by upstream {upstream!r})",
                field=field,
                fix=f"export {credential.env}=... before starting, or use file = instead",
            )
        return Secret(value)
    assert credential.file is not None
    path = Path(credential.file).expanduser()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            config_file,
            f"cannot read credential file {str(path)!r} of upstream {upstream!r} ({exc.strerror})",
            field=field,
            fix="write the key into that file, or use env = instead",
        ) from None
    if not value:
        raise ConfigError(
            config_file,
            f"credential file {str(path)!r} of upstream {upstream!r} is empty",
            field=field,
            fix="write the key into that file",
        )
    return Secret(value)


def read_secrets(
    config: GatewayConfig,
    environ: Mapping[str, str] | None = None,
    config_file: str = "overnight.toml",
) -> dict[tuple[str, str], Secret]:
    """Every credential's secret, keyed by (upstream, credential name); fails on the first missing."""
    return {
        (u.name, c.name): read_secret(u.name, c, environ, config_file)
        for u in config.upstreams
        for c in u.credentials
    }


def load_gateway_config(path: Path) -> GatewayConfig:
    """The `[gateway]` table of a TOML file (an `overnight.toml`, or a file of its own).

    Bad input raises one `ConfigError` naming the file, the field, its line and the fix.
    """
    # org code's loader words the messages; imported here, as it imports this module
    from overnight.org.load import config_error, read_toml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            path, f"cannot read it ({exc.strerror})", fix="check the path given to --config"
        ) from None
    data = read_toml(text, path)
    inside = "gateway" in data
    try:
        return GatewayConfig.model_validate(data["gateway"] if inside else data)
    except ValidationError as exc:
        raise config_error(
            exc, GatewayConfig, text, path, prefix=("gateway",) if inside else ()
        ) from None
