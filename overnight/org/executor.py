"""The `[executor]` table of `overnight.toml`: where trials' experiments run.

Owns the fields, their defaults and the checks that need nothing but the file:
`kind = "local"` (the default: on this machine, `[lab] parallel` at a time) or
`kind = "ray"` (each experiment a task on a Ray cluster at `address`, with
`num_cpus`, `[lab] gpus_per_trial` GPUs and the custom `resources` it asks for).
Whether Ray is installed and the cluster answers is checked when a lab starts
(`overnight.lab.cluster`); this module knows nothing about Ray itself.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from overnight.errors import Invalid

_ADDRESS = re.compile(r"^(?:auto|(?:ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")
_RAY_ONLY = ("address", "num_cpus", "resources")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExecutorConfig(_Model):
    """`[executor]`: this machine (`local`) or a Ray cluster (`ray`)."""

    kind: Literal["local", "ray"] = "local"
    address: str = "auto"
    """The cluster: `"auto"` (the one `ray start` began on this machine, or RAY_ADDRESS),
    `"host:port"` of its head (GCS), or `"ray://host:10001"`: its head's Ray Client
    server, for a lab on a machine outside the cluster."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs one trial's experiment reserves on its node."""
    resources: dict[str, float] = {}
    """Custom resources one trial reserves, e.g. `{"a100" = 1}`: only nodes declaring
    them (`ray start --resources='{"a100": 1}'`) run trials."""

    @field_validator("address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if not _ADDRESS.match(value.strip()):
            raise Invalid(
                f"{value!r} is not the address of a Ray cluster",
                fix='write address = "auto", "HOST:6379" (the head\'s GCS port) or '
                '"ray://HOST:10001" (its Ray Client server)',
            )
        return value.strip()

    @field_validator("resources")
    @classmethod
    def _positive_amounts(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if amount <= 0 or not name.strip():
                raise Invalid(
                    f"resource {name!r} = {amount:g} reserves nothing",
                    fix='give each custom resource a positive amount, e.g. resources = {"a100" = 1}',
                    at=(name,),
                )
        return value

    @model_validator(mode="after")
    def _ray_fields_with_ray(self) -> Self:
        if self.kind == "local":
            stray = [name for name in _RAY_ONLY if name in self.model_fields_set]
            if stray:
                raise Invalid(
                    f'{stray[0]} is for a Ray cluster, but kind is "local"',
                    fix=f'set kind = "ray" to run trials on a cluster, or remove {stray[0]}',
                    at=(stray[0],),
                )
        return self
