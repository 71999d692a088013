"""The shape of org code: what `overnight.toml` may say, as frozen pydantic models.

Owns field names, types, defaults and the checks that need nothing but the file
itself. Knows nothing about git, the store or the disk beyond the file being
read: checks against the repository (globs that match nothing, knobs whose
assignment is missing, a run command that does not exist) happen when a lab
starts, in `overnight.lab`.
"""

from __future__ import annotations

import difflib
import json
import re
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from overnight.errors import Invalid
from overnight.globs import matches
from overnight.org import constraints as constraint
from overnight.org.executor import ExecutorConfig
from overnight.org.gateway import GatewayConfig
from overnight.org.notify import SinkConfig, check_names
from overnight.paths import STATE_DIR
from overnight.records import AUTORESEARCH_COLUMNS, LEDGER_COLUMNS
from overnight.units import Duration, PositiveDuration, Size, _shown, parse_duration


class Goal(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


class OnDivergence(StrEnum):
    """What happens to a keep whose metric improved while the hidden holdout did not."""

    flag = "flag"
    reject = "reject"
    review = "review"


class Autonomy(StrEnum):
    curious = "curious"
    ready = "ready"
    embedded = "embedded"


class _Model(BaseModel):
    # TOML can say inf and nan; no setting here means either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_PLATEAU = re.compile(r"^\s*(\d+)\s*trials?\s*$", re.IGNORECASE)
_PLATEAU_FIX = (
    'write a number of trials or a duration, e.g. plateau = "40 trials" or plateau = "2h"'
)


def plateau_limit(text: str) -> tuple[int | None, float | None]:
    """(trials, seconds) of a plateau as written: `"40 trials"` or a duration (`"2h"`)."""
    match = _PLATEAU.match(text)
    if match:
        return int(match.group(1)), None
    return None, parse_duration(text)


class StopConfig(_Model):
    """`[lab.stop]`: the rules that end a run by themselves (besides `--trials`, `--for`)."""

    target: float | None = None
    """Stop when the lab's best reaches this (at or below it when minimizing, at or
    above it when maximizing)."""
    plateau: str | None = None
    """Stop after this long without a new lab best: `"40 trials"` or a duration (`"2h"`),
    counted within one `overnight run`."""
    crash_streak: int | None = None
    """Pause an agent whose trials crashed (or timed out, or were rejected) this many times
    in a row; the run stops when every agent is paused so."""

    @field_validator("target", mode="before")
    @classmethod
    def _target_is_a_number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(
                f"must be a number, the value of the metric to stop at (got {_shown(value)})",
                fix="write the metric's value without quotes, e.g. target = 0.25",
            )
        return value

    @field_validator("plateau", mode="before")
    @classmethod
    def _plateau_is_trials_or_time(cls, value: object) -> object:
        if not isinstance(value, str):
            # a bare number could mean trials or seconds: the user says which
            raise Invalid(
                f"{_shown(value)} is neither a number of trials nor a duration", fix=_PLATEAU_FIX
            )
        try:
            trials, seconds = plateau_limit(value)
        except Invalid:
            raise Invalid(
                f"{value!r} is neither a number of trials nor a duration", fix=_PLATEAU_FIX
            ) from None
        if trials == 0 or seconds == 0:
            raise Invalid(
                f"{value!r} would stop the run before it tried anything", fix=_PLATEAU_FIX
            )
        return value

    @field_validator("crash_streak")
    @classmethod
    def _streak_of_at_least_one(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise Invalid(
                f"{value} crashes in a row would pause every agent before it tried anything",
                fix="set crash_streak = 1 or more (e.g. 8), or leave it out to never pause",
            )
        return value

    @property
    def plateau_trials(self) -> int | None:
        return plateau_limit(self.plateau)[0] if self.plateau else None

    @property
    def plateau_seconds(self) -> float | None:
        return plateau_limit(self.plateau)[1] if self.plateau else None


_VALUE_NAME = r"^[A-Za-z_][A-Za-z0-9_./-]*$"
MEMORY = "memory_gb"
"""The peak-memory column every trial has (a printed peak_vram_mb / 1024, else peak RSS)."""
VRAM = "peak_vram_mb"
"""Watched in every run's output, as autoresearch's train.py prints it."""


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
    metric: str = Field(min_length=1, pattern=_VALUE_NAME)
    goal: Goal = Goal.minimize
    min_delta: float | Literal["auto"] | None = None
    """A keep must beat the best by more than this; "auto" measures it (the noise
    floor, 2σ of `noise_runs` baseline runs); None: "auto" where that is cheap
    (see `measures_noise`), else 0."""
    confirm_runs: int = Field(default=0, ge=0, le=10)
    parallel: int = Field(default=1, ge=1, le=64)
    gpus_per_trial: int = Field(default=0, ge=0)
    max_log: Size = 50 * 10**6
    record: list[str] = []
    """Other `name: value` lines of a run kept with each trial (secondary metrics)."""
    constraints: list[str] = []
    """Bounds on the metric, memory_gb or a recorded value, e.g. "peak_vram_mb <= 70000";
    a trial that breaks one (or does not print the value) is discarded, saying which."""
    sandbox: Literal["bwrap", "none"] | None = None
    """Walls around experiments and agents' CLIs; None: bwrap where it works (a warning
    where it does not), "none": no sandbox, said on purpose."""
    network: bool = True
    """Whether experiments may use the network (agents' CLIs always reach the gateway)."""
    env: list[str] = []
    """Environment for experiments and agents' CLIs beyond the allowlist: `NAME` passes
    overnight's value on, `NAME=value` sets one."""
    writable: list[str] = []
    """Folders besides the worktree that experiments may write (caches), `~` expanded."""
    max_logs: Size = Field(default=20 * 10**9, gt=0)
    """All of the lab's trial logs together; the oldest lose their middles first."""
    min_free_disk: Size = Field(default=2 * 10**9, ge=0)
    """No trial starts while the filesystem holding `.overnight/` has less space free."""
    # Sharing and stop rules (overnight.lab.sharing, overnight.lab.stop). Neither changes
    # what a trial measures, so a run resumes with new values (see config_fingerprint).
    share: Literal["best", "none"] | None = None
    """"best": an agent trailing the lab's best beyond the noise for `patience` of its own
    trials in a row moves to the lab's best commit; "none": each agent ratchets alone.
    None: "best" when the lab has two or more agents."""
    patience: int = Field(default=5, ge=1)
    """How many of its own trials in a row an agent may trail the lab's best before it
    moves there."""
    stop: StopConfig = StopConfig()
    """When a run stops by itself (`[lab.stop]`)."""
    # -- keeps that can be trusted: the noise floor and the hidden holdout
    noise_runs: int = Field(default=3, ge=2, le=20)
    """Runs of the baseline at a run's start when the noise floor is measured."""
    holdout: str | None = Field(default=None, min_length=1)
    """A command run on each candidate that would become the lab's best, in a clean
    checkout of it with the `hidden` files restored; prints `holdout_metric`."""
    hidden: list[str] = []
    """Globs of files in the lab that no agent's worktree contains (never committed)."""
    holdout_metric: str | None = Field(
        default=None, min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$"
    )
    """The name in the holdout's `name: value` line; None: the lab's `metric`."""
    on_divergence: OnDivergence = OnDivergence.flag
    """A keep whose metric improved and whose holdout did not: flag it, reject it, or
    ask a human (review, through the approvals inbox)."""

    @property
    def measures_noise(self) -> bool:
        """Whether a run starts by measuring the noise floor: `min_delta = "auto"`, or
        unset while the extra baseline runs cost at most AUTO_NOISE_COST."""
        if self.min_delta is None:
            return (self.noise_runs - 1) * self.budget <= AUTO_NOISE_COST
        return self.min_delta == "auto"

    @property
    def holdout_name(self) -> str:
        return self.holdout_metric or self.metric

    @field_validator("min_delta", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        fix = 'write a number of the metric\'s units (e.g. min_delta = 0.01), or "auto" to measure the noise'
        if value is None:  # unset (TOML cannot say None; a run's record of its config can)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Invalid(f'{_shown(value)} is neither a number nor "auto"', fix=fix)
        if isinstance(value, str) and value != "auto":
            raise Invalid(f'{value!r} is neither a number nor "auto"', fix=fix)
        if not isinstance(value, str) and value < 0:
            raise Invalid(
                f"must be at least 0 (got {value!r})",
                fix='set min_delta = 0 or more, or "auto" to measure the noise',
            )
        return value

    @model_validator(mode="after")
    def _holdout_needs_hidden(self) -> Self:
        if self.holdout is not None and not self.hidden:
            raise Invalid(
                "holdout is set and hidden is empty: the holdout would judge with files every "
                "agent can read",
                fix='list its files in hidden, e.g. hidden = ["holdout_eval.py", "holdout/**"] '
                "(kept out of git and out of every agent's reach)",
                at=("holdout",),
            )
        for key in ("hidden", "holdout_metric", "on_divergence"):
            if self.holdout is None and getattr(self, key) not in (None, [], OnDivergence.flag):
                raise Invalid(
                    f"{key} is set, and there is no holdout for it to serve",
                    fix=f'add holdout = "python holdout_eval.py" (the command that measures '
                    f"on the hidden files), or remove {key}",
                    at=(key,),
                )
        for i, glob in enumerate(self.hidden):
            parts = glob.replace("\\", "/").split("/")
            if glob.startswith(("/", "~")) or ".." in parts or parts[0] in (".git", STATE_DIR):
                raise Invalid(
                    f"{glob!r} is not a path inside the lab",
                    fix='write it relative to overnight.toml, e.g. "holdout/**"',
                    at=("hidden", i),
                )
            for key in ("editable", "protected"):
                globs = getattr(self, key)
                both = glob if glob in globs else None
                both = both or next(
                    (g for g in globs if not _is_glob(g) and matches(g, [glob])), None
                )
                if both is None and not _is_glob(glob):
                    both = next((g for g in globs if matches(glob, [g])), None)
                if both is not None:
                    raise Invalid(
                        f"{glob!r} is hidden, and {key} has {both!r} too: agents see every "
                        f"{key} file, and no agent may see a hidden one",
                        fix=f"keep the holdout's files apart: remove {glob!r} from hidden or "
                        f"{both!r} from {key}",
                        at=("hidden", i),
                    )
        return self

    @model_validator(mode="after")
    def _editable_not_protected(self) -> Self:
        for i, glob in enumerate(self.protected):
            if glob in self.editable:
                raise Invalid(
                    f"{glob!r} is both editable and protected; a file can be only one of them",
                    fix=f"remove {glob!r} from editable (agents may change it) or from protected "
                    "(nobody may)",
                    at=("protected", i),
                )
        # Globs against globs need the committed files (checked when the lab starts); a
        # written-out path is checked here, so the mistake shows before anything runs.
        for i, path in enumerate(self.protected):
            covering = next((g for g in self.editable if matches(path, [g])), None)
            if covering is not None and not _is_glob(path):
                raise Invalid(
                    f"{path!r} is protected, and the editable glob {covering!r} covers it too; "
                    "a file can be only one of them",
                    fix=overlap_fix(
                        covering, [path], [g for g in self.editable if not _is_glob(g)]
                    ),
                    at=("protected", i),
                )
        for i, path in enumerate(self.editable):
            covering = next((g for g in self.protected if matches(path, [g])), None)
            if covering is not None and not _is_glob(path):
                raise Invalid(
                    f"{path!r} is editable, and the protected glob {covering!r} covers it too; "
                    "a file can be only one of them",
                    fix=f"remove {path!r} from editable, or narrow {covering!r} so it leaves it out",
                    at=("editable", i),
                )
        for i, item in enumerate(self.env):
            if not _ENV_ITEM.match(item):
                raise Invalid(
                    f"{item!r} is neither a variable's name nor NAME=value",
                    fix='write "NAME" to pass your value of NAME on, or "NAME=value" to set it',
                    at=("env", i),
                )
        if self.budget <= 0:
            raise Invalid(
                "budget is 0; a run needs time",
                fix='give it time, e.g. budget = "5m"',
                at=("budget",),
            )
        self._recorded_values()
        return self

    def _recorded_values(self) -> None:
        taken = {c.lower() for c in (*AUTORESEARCH_COLUMNS, *LEDGER_COLUMNS) if "{" not in c}
        first: dict[str, int] = {}
        for i, name in enumerate(self.record):
            if not re.match(_VALUE_NAME, name):
                suggestion = re.sub(r"[^A-Za-z0-9_./-]+", "_", name).strip("_")
                raise Invalid(
                    f"{name!r} is not a name a run prints before its colon: a letter or _, "
                    "then letters, digits and _ . / -",
                    fix=f'write it as the run prints it, e.g. "{suggestion or "peak_vram_mb"}"',
                    at=("record", i),
                )
            if name.lower() == self.metric.lower():
                raise Invalid(
                    f"{name!r} is the metric, which every trial records already",
                    fix=f"remove {name!r} from record",
                    at=("record", i),
                )
            if name.lower() in taken:
                raise Invalid(
                    f"{name!r} is the name of a ledger column"
                    + (" (overnight measures it)" if name == MEMORY else ""),
                    fix=f"remove {name!r} from record"
                    + ("; constraints may name memory_gb as it is" if name == MEMORY else ""),
                    at=("record", i),
                )
            if name.lower() in first:  # output lines are matched whatever their case
                raise Invalid(
                    f"{name!r} is recorded twice",
                    fix="list each name once (names match output lines whatever their case)",
                    at=("record", i),
                    first=("record", first[name.lower()]),
                )
            first[name.lower()] = i
        known = [self.metric, MEMORY, *self.record]
        for i, text in enumerate(self.constraints):
            try:
                parsed = constraint.parse(text)
            except constraint.ConstraintSyntax as exc:
                raise Invalid(exc.problem, fix=exc.fix, at=("constraints", i)) from None
            if parsed.name not in known:
                close = difflib.get_close_matches(parsed.name, known, n=1)
                raise Invalid(
                    f"constraint {text!r} is on {parsed.name!r}, which is not recorded",
                    fix=f'did you mean {close[0]!r}? write "{close[0]} {parsed.op} {text.split(parsed.op, 1)[1].strip()}"'
                    if close
                    else f'add "{parsed.name}" to record (record = ["{parsed.name}"]), or bound '
                    f"the metric ({self.metric}) or memory_gb",
                    at=("constraints", i),
                )

    @field_validator("max_logs")
    @classmethod
    def _room_for_running_trials(cls, value: int, info: ValidationInfo) -> int:
        parallel, max_log = info.data.get("parallel"), info.data.get("max_log")
        if parallel is not None and max_log is not None and value < 2 * parallel * max_log:
            raise Invalid(
                f"{value} bytes is too small: the logs of {parallel} trial(s) running at "
                f"once take up to max_log = {max_log} bytes each, and the older logs need as "
                "much room again",
                fix=f"raise it to at least {2 * parallel * max_log} bytes "
                "(2 x parallel x max_log), or lower max_log",
            )
        return value


_ENV_ITEM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(=.*)?$", re.DOTALL)


AUTO_NOISE_COST = 1800.0
"""Seconds of extra baseline runs ((noise_runs - 1) x budget) an unset min_delta spends
to measure the noise floor; beyond it min_delta is 0 unless set to "auto"."""


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def overlap_fix(glob: str, protected_files: list[str], editable_files: list[str]) -> str:
    """How to keep protected files out of an editable glob's reach, in the user's terms."""
    shown = ", ".join(json.dumps(f) for f in editable_files[:4]) or '"train.py"'
    more = ", ..." if len(editable_files) > 4 else ""
    return (
        f"list the editable files one by one (e.g. editable = [{shown}{more}]), or narrow "
        f"{glob!r} so it leaves {', '.join(protected_files)} out"
    )


class KnobConfig(_Model):
    """A top-level assignment in an editable file that the optimizer may set."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    int_: bool = Field(default=False, alias="int")
    choices: list[str | int | float | bool] | None = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _range_or_choices(self) -> Self:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged:
                raise Invalid(
                    f"knob {self.name!r} has both a range (low/high) and choices",
                    fix="keep one: low and high for a range, or choices for a list of values",
                    at=("choices",),
                )
            if len(self.choices) < 2:
                raise Invalid(
                    f"knob {self.name!r} has {len(self.choices) or 'no'} choice"
                    f"{'' if len(self.choices) == 1 else 's'}; there is nothing to choose from",
                    fix="list at least two values, e.g. choices = [16, 32, 64]",
                    at=("choices",),
                )
            return self
        if self.low is None or self.high is None:
            if ranged:
                given, absent = ("low", "high") if self.high is None else ("high", "low")
                raise Invalid(
                    f"knob {self.name!r} has {given} but no {absent}",
                    fix=f"add {absent} = ...: a range needs both ends",
                    at=(given,),
                )
            raise Invalid(
                f"knob {self.name!r} has neither a range nor choices",
                fix="add low = ... and high = ... (a range), or choices = [...] (a list)",
            )
        if self.low >= self.high:
            raise Invalid(
                f"knob {self.name!r}: low ({self.low:g}) is not below high ({self.high:g})",
                fix="make low the smaller end of the range"
                + (", e.g. swap them" if self.low > self.high else ""),
                at=("low",),
            )
        if self.log and self.low <= 0:
            raise Invalid(
                f"knob {self.name!r} is log-scaled, and low ({self.low:g}) is not above 0",
                fix="set low above 0 (e.g. 1e-5), or remove log = true",
                at=("low",),
            )
        if self.int_:
            for end, value in (("low", self.low), ("high", self.high)):
                if value != int(value):
                    raise Invalid(
                        f"knob {self.name!r} takes whole numbers (int = true), and {end} "
                        f"({value:g}) is not one",
                        fix=f"make {end} a whole number, or remove int = true",
                        at=(end,),
                    )
        return self


class OnAnomaly(StrEnum):
    notify = "notify"
    pause = "pause"


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
    on_anomaly: OnAnomaly = OnAnomaly.notify
    """When its spending is anomalous against its own history (overnight.costs.anomaly):
    a `cost.anomaly` event, which [[notify]] sinks hear of; `pause` also pauses the agent
    until a person resumes it."""
    # Fresh context for CLI agents (overnight.agents.external).
    fresh_every: int = Field(default=25, ge=0)
    """An external agent's conversation ends after this many of its trials (0: never; it
    also ends when the CLI reports its context nearly full) and a new one starts from a
    brief: program, rules, the lab notebook, the agent's best diff. 25 by default: long
    conversations rot, and the brief carries everything a new one needs."""


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
    webhook: str | None = None
    """Where a Slack-compatible JSON message goes when an approval arrives: one more
    `[[notify]]` sink, told of approvals only (overnight.org.notify.named_sinks)."""

    @field_validator("webhook")
    @classmethod
    def _webhook_is_a_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://\S+$", url):
            raise Invalid(
                f"{url!r} is not an http:// or https:// URL",
                fix='write the whole URL, e.g. webhook = "https://hooks.slack.com/services/..."',
            )
        return url

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        if self.review_at > self.deny_at:
            raise Invalid(
                f"review_at ({self.review_at:g}) is above deny_at ({self.deny_at:g}); a risk "
                "would be denied before it could be reviewed",
                fix="set review_at to at most deny_at, e.g. review_at = 0.5 and deny_at = 0.85",
                at=("review_at",),
            )
        return self


class OrgConfig(_Model):
    """The whole of `overnight.toml`."""

    lab: LabConfig
    knobs: list[KnobConfig] = []
    agents: list[AgentConfig] = []
    gateway: GatewayConfig | None = None
    governance: GovernanceConfig = GovernanceConfig()
    notify: list[SinkConfig] = []
    """`[[notify]]`: where the night watch sends what it sees (overnight.notify)."""
    executor: ExecutorConfig = ExecutorConfig()
    """`[executor]`: where trials' experiments run (this machine, or a Ray cluster)."""

    @model_validator(mode="after")
    def _sink_names(self) -> Self:
        check_names(self.notify)
        return self

    @model_validator(mode="after")
    def _no_credential_for_experiments(self) -> Self:
        credentials = {
            c.env: u.name
            for u in (self.gateway.upstreams if self.gateway else [])
            for c in u.credentials
            if c.env
        }
        for i, item in enumerate(self.lab.env):
            name = item.partition("=")[0]
            if name in credentials:
                raise Invalid(
                    f"{name} holds the credential of upstream {credentials[name]!r}, which "
                    "only the gateway may read; experiments and agents never get it",
                    fix=f"remove {item!r} from env; agents reach models through the gateway",
                    at=("lab", "env", i),
                )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        for table, kind, names in (
            ("knobs", "knob", [k.name for k in self.knobs]),
            ("agents", "agent", [a.name for a in self.agents]),
        ):
            first: dict[str, int] = {}
            for i, name in enumerate(names):
                if name in first:
                    raise Invalid(
                        f"{kind} name {name!r} is used twice",
                        fix=f"give each [[{table}]] a name of its own",
                        at=(table, i, "name"),
                        first=(table, first[name], "name"),
                    )
                first[name] = i
        # `count` names copies name-1, name-2, ...: those names are taken too
        copies: dict[str, int] = {}
        for i, agent in enumerate(self.agents):
            if agent.count > 1:
                copies.update((f"{agent.name}-{n}", i) for n in range(1, agent.count + 1))
        for i, agent in enumerate(self.agents):
            if agent.count == 1 and agent.name in copies:
                owner = self.agents[copies[agent.name]]
                raise Invalid(
                    f"agent name {agent.name!r} is also the name of a copy of agent "
                    f"{owner.name!r}, whose count = {owner.count} names its copies "
                    f"{owner.name}-1 to {owner.name}-{owner.count}",
                    fix="rename one of the two agents",
                    at=("agents", i, "name"),
                    first=("agents", copies[agent.name], "name"),
                )
        if self.gateway is not None:
            running = [name for name, _ in self.agent_names()]
            for name in self.gateway.budgets.agents:
                if name not in running:
                    counted = any(a.name == name and a.count > 1 for a in self.agents)
                    close = difflib.get_close_matches(name, running, n=1)
                    raise Invalid(
                        f"[gateway.budgets.agents.{name}] names no agent, so it limits nothing "
                        f"(the agents: {', '.join(running)})",
                        fix=f"agent {name!r} runs as copies: budget = ... in its [[agents]] table "
                        f"caps each copy, or name one copy, e.g. [gateway.budgets.agents.{name}-1]"
                        if counted
                        else f"did you mean {close[0]!r}?"
                        if close
                        else "name an agent as it runs (a [[agents]] with count = N runs as "
                        "name-1 to name-N)",
                        at=("gateway", "budgets", "agents", name),
                    )
        return self

    def shares(self) -> bool:
        """Whether the agents share (`[lab] share`): "best", or unset with two agents or more."""
        share = self.lab.share
        return share == "best" or (share is None and len(self.agent_names()) >= 2)

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
