"""The gateway's configuration at start: the `[gateway]` table read, and its secrets.

Owns reading credentials from environment variables or files when the gateway
starts, and loading a `[gateway]` table from a file of its own (`overnight gateway
--config`). The table's models are org code's (`overnight.org.gateway`). Knows
nothing about HTTP, routing state or the store: a secret lives only in the
running gateway's memory, wrapped so it never prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from overnight import redaction
from overnight.errors import ConfigError
from overnight.org.gateway import CredentialConfig, GatewayConfig
from overnight.org.load import config_error, read_toml


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
