"""Org code: `overnight.toml` + `program.md`, loaded and validated.

Owns the configuration's shape (the `[gateway]` table's included), the little
languages inside it (constraints, knob assignments) and its error messages. Knows
nothing about git, the store, or how trials run.
"""

from overnight.org.config import AgentConfig, Autonomy, Goal, KnobConfig, LabConfig, OrgConfig
from overnight.org.load import CONFIG_FILE, Org, load_org, parse_config

__all__ = [
    "CONFIG_FILE",
    "AgentConfig",
    "Autonomy",
    "Goal",
    "KnobConfig",
    "LabConfig",
    "Org",
    "OrgConfig",
    "load_org",
    "parse_config",
]
