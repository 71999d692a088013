"""What of a lab's config its costs depend on, as plain values, and the copy a lab keeps.

Owns `CostConfig` (the goal, the price overrides, each budget's limits) drawn from an
`OrgConfig`, and its saved copy in `.overnight/`, beside the text of `overnight.toml` it
came from:
`overnight costs` answers from the copy without importing the config's models, which
costs more than the answer itself. The copy is written only from a config that
validated, and read only while the file holds the same bytes and its program file is
still there (all a config's validity depends on), so the answer is the one the full
config gives. Knows nothing about how a config is validated.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight import __version__
from overnight.paths import StateDir

if TYPE_CHECKING:
    from overnight.org import OrgConfig
    from overnight.org.gateway import GatewayConfig, LimitConfig

FORMAT = 1
"""Bumped when what is saved changes meaning: an old copy is then ignored."""


@dataclass(frozen=True)
class Limit:
    """A budget's caps, USD (None: no cap of that period)."""

    total_usd: float | None = None
    daily_usd: float | None = None


@dataclass(frozen=True)
class PriceOverride:
    """`[gateway.prices.NAME]`: USD per million tokens; a cache price of None is the input's."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class CostConfig:
    """The config as the costs package reads it."""

    lab: str
    goal: str
    """'minimize' or 'maximize'."""
    prices: Mapping[str, PriceOverride]
    gateway: bool
    """Whether the lab has a `[gateway]` (budgets exist only with one)."""
    org: Limit
    agents: tuple[tuple[str, Limit | None], ...]
    """Every agent instance, in the config's order, with the limit the gateway applies to it
    (None: no limit)."""

    @classmethod
    def of(cls, config: OrgConfig) -> CostConfig:
        gateway = config.gateway
        agents: list[tuple[str, Limit | None]] = []
        for name, agent in config.agent_names():
            limit = None if gateway is None else agent_limit(gateway, name, agent.budget)
            agents.append(
                (name, None if limit is None else Limit(limit.total_usd, limit.daily_usd))
            )
        return cls(
            lab=config.lab.name,
            goal=str(config.lab.goal),
            prices={
                name: PriceOverride(p.input, p.output, p.cache_read, p.cache_write)
                for name, p in (gateway.prices if gateway else {}).items()
            },
            gateway=gateway is not None,
            org=Limit(gateway.budgets.org.total_usd, gateway.budgets.org.daily_usd)
            if gateway
            else Limit(),
            agents=tuple(agents),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "goal": self.goal,
            "prices": {k: vars(v) for k, v in self.prices.items()},
            "gateway": self.gateway,
            "org": vars(self.org),
            "agents": [[name, None if lim is None else vars(lim)] for name, lim in self.agents],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostConfig:
        return cls(
            lab=data["lab"],
            goal=data["goal"],
            prices={k: PriceOverride(**v) for k, v in data["prices"].items()},
            gateway=data["gateway"],
            org=Limit(**data["org"]),
            agents=tuple(
                (name, None if lim is None else Limit(**lim)) for name, lim in data["agents"]
            ),
        )


def agent_limit(gateway: GatewayConfig, name: str, budget: float | None) -> LimitConfig | None:
    """The limit the gateway applies to agent `name` (`[gateway.budgets.agents]`, else the
    agent's own `budget` as a total, else `[gateway.budgets.agent]`), or None."""
    from overnight.org.gateway import LimitConfig  # the config's models: only when a config is read

    limit = gateway.budgets.agents.get(name)
    if limit is None and budget is not None:
        limit = LimitConfig(total_usd=budget)
    if limit is None:
        limit = gateway.budgets.agent
    if limit.total_usd is None and limit.daily_usd is None:
        return None
    return limit


def _key() -> str:
    return f"{FORMAT}:{__version__}"


def config_bytes(root: Path) -> bytes | None:
    """The bytes of the lab's `overnight.toml`, None when there is none."""
    try:
        return (root / "overnight.toml").read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def saved(root: Path, text: bytes) -> CostConfig | None:
    """The copy saved from a valid config of these bytes, None when there is none (or its
    program file is gone: the config no longer loads)."""
    try:
        data = json.loads(StateDir.of(root).cost_config.read_bytes())
        if (
            data.get("key") != _key()
            or data.get("text") != text.decode("utf-8")
            or not (root / data["program"]).is_file()
        ):
            return None
        return CostConfig.from_dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(root: Path, text: bytes, config: OrgConfig) -> None:
    """Keep the costs' part of `config`, validated from `text` (the file's bytes, read before
    it was loaded), for `saved`; nothing when the file changed meanwhile. Written whole or
    not at all (a reader never sees half a file); a failure to write is no error: the next
    `overnight costs` validates the config again."""
    path = StateDir.of(root).cost_config
    if not path.parent.is_dir() or config_bytes(root) != text:
        return  # a lab that never ran has no state to keep it in; or a file edited meanwhile
    data = {
        "key": _key(),
        "text": text.decode("utf-8"),  # valid UTF-8: the config loaded
        "program": config.lab.program,
        "config": CostConfig.of(config).as_dict(),
    }
    part = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        part.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(part, path)
    except OSError:
        with contextlib.suppress(OSError):
            part.unlink()
