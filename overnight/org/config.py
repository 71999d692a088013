"""The shape of org code: what `overnight.toml` may say, as frozen pydantic models.

Owns field names, types, defaults and the checks that need nothing but the file
itself. Knows nothing about git, the store or the disk beyond the file being
read: checks against the repository (globs that match nothing, knobs whose
assignment is missing, a run command that does not exist) happen when a lab
starts, in `overnight.lab`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from overnight.gateway.config import GatewayConfig
from overnight.units import Duration, PositiveDuration, Size


class Goal(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


class Autonomy(StrEnum):
    curious = "curious"
    ready = "ready"
    embedded = "embedded"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabConfig(_Model):
    """The research target: what may change, how it runs, what it is judged by."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    program: str = "program.md"
    editable: list[str] = Field(min_length=1)
    protected: list[str] = []
    run: str = Field(min_length=1)
    evaluate: str | None = None
    budget: Duration = 300.0
    grace: Duration = 60.0
    metric: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$")
    goal: Goal = Goal.minimize
    min_delta: float = Field(default=0.0, ge=0)
    confirm_runs: int = Field(default=0, ge=0, le=10)
    parallel: int = Field(default=1, ge=1, le=64)
    gpus_per_trial: int = Field(default=0, ge=0)
    max_log: Size = 50 * 10**6

    @model_validator(mode="after")
    def _editable_not_protected(self) -> Self:
        both = set(self.editable) & set(self.protected)
        if both:
            raise ValueError(
                f"{sorted(both)} is both editable and protected; a file can be only one of them"
            )
        if self.budget <= 0:
            raise ValueError("budget must be longer than zero")
        return self

    max_logs: Size = Field(default=20 * 10**9, gt=0)
    """All of the lab's trial logs together; the oldest lose their middles first."""
    min_free_disk: Size = Field(default=2 * 10**9, ge=0)
    """No trial starts while the filesystem holding `.overnight/` has less space free."""

    @field_validator("max_logs")
    @classmethod
    def _room_for_running_trials(cls, value: int, info: ValidationInfo) -> int:
        parallel, max_log = info.data.get("parallel"), info.data.get("max_log")
        if parallel is not None and max_log is not None and value < 2 * parallel * max_log:
            raise ValueError(
                f"{value} bytes is too small: the logs of {parallel} trial(s) running at "
                f"once take up to max_log = {max_log} bytes each, and the older logs need as "
                f"much room again; raise it to at least {2 * parallel * max_log} bytes "
                "(2 x parallel x max_log), or lower max_log"
            )
        return value


class KnobConfig(_Model):
    """A top-level assignment in an editable file that the optimizer may set."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    int_: bool = Field(default=False, alias="int")
    choices: list[str | int | float | bool] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _range_or_choices(self) -> Self:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged:
                raise ValueError("give either low/high or choices, not both")
            if not self.choices:
                raise ValueError("choices is empty; list at least two values")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices (a list)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled knob needs low > 0")
        if self.int_ and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int knob needs whole-number low and high")
        return self


class OnBrownout(StrEnum):
    pause = "pause"
    optimize = "optimize"


class AgentConfig(_Model):
    """A worker: its runtime, how many copies, how free it is, what it may spend."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    runtime: str = "optuna"
    count: int = Field(default=1, ge=1, le=64)
    autonomy: Autonomy = Autonomy.embedded
    budget: float | None = Field(default=None, ge=0, description="USD spend cap for LLM calls")
    model: str | None = Field(
        default=None, min_length=1, description="the [gateway.models] alias its LLM calls use"
    )
    idle_after: Duration = 300.0
    """An external agent idle this long is nudged to go on."""
    nudge: str = "Continue with the next experiment. Submit each change with `overnight try`."
    on_brownout: OnBrownout = OnBrownout.pause
    """When every candidate of its model route is down: pause, or keep the lab moving with
    the offline optimizer (`optimize`, needs [[knobs]])."""


class GovernanceConfig(_Model):
    """Which policy files judge every agent action, and when risk needs a human."""

    policies: list[str] = []
    """Globs of policy files relative to the lab, loaded after the shipped defaults."""
    defaults: bool = True
    """Load overnight's shipped default rules first (false: only `policies`)."""
    review_at: float = Field(default=0.5, gt=0, le=1)
    deny_at: float = Field(default=0.85, gt=0, le=1)
    approval_timeout: PositiveDuration = 3600.0
    """An approval nobody answers in this long expires (recorded apart from denied)."""
    webhook: str | None = Field(default=None, pattern=r"^https?://\S+$")
    """Where a Slack-compatible JSON message goes when an approval arrives."""

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        if self.review_at > self.deny_at:
            raise ValueError(
                f"review_at ({self.review_at}) must not be above deny_at ({self.deny_at})"
            )
        return self


class OrgConfig(_Model):
    """The whole of `overnight.toml`."""

    lab: LabConfig
    knobs: list[KnobConfig] = []
    agents: list[AgentConfig] = []
    gateway: GatewayConfig | None = None
    governance: GovernanceConfig = GovernanceConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        for kind, names in (
            ("knobs", [k.name for k in self.knobs]),
            ("agents", [a.name for a in self.agents]),
        ):
            seen = {n for n in names if names.count(n) > 1}
            if seen:
                raise ValueError(f"{kind} names must be unique; repeated: {sorted(seen)}")
        return self

    def agent_names(self) -> list[tuple[str, AgentConfig]]:
        """Every agent instance, with `count` expanded (`tuner-1`, `tuner-2`, ...)."""
        agents = self.agents or [
            AgentConfig(name="tuner", runtime="optuna", count=self.lab.parallel)
        ]
        out: list[tuple[str, AgentConfig]] = []
        for agent in agents:
            if agent.count == 1:
                out.append((agent.name, agent))
            else:
                out.extend((f"{agent.name}-{i}", agent) for i in range(1, agent.count + 1))
        return out
