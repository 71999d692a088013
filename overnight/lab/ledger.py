"""The ledger: every trial of a run as rows, the autoresearch-compatible TSV, and a status summary.

Read-only views over the store; they never take the lab's lock, so they work
while `overnight run` is going. Nor do they need a valid `overnight.toml`: the
ledger must stay readable after a bad edit of the config is committed, so when it
does not load, a view reads the store by the lab's name (the file's raw `[lab] name`,
or the only lab the store holds) with the config the run recorded when it started,
and says why (`LabStore.warning`). Knows nothing about how trials are run.
"""

from __future__ import annotations

import io
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from overnight.costs.overview import run_forecast
from overnight.costs.trials import TrialCost, trial_costs
from overnight.errors import ConfigError, UserError
from overnight.lab.keeps import best_trial
from overnight.lab.lock import AgentLock, holder
from overnight.lab.ratchet import better
from overnight.lab.stop import STOPPING
from overnight.org import CONFIG_FILE, Org, OrgConfig, load_org
from overnight.records import (
    AUTORESEARCH_COLUMNS,
    AUTORESEARCH_STATUS,
    BASELINE,
    IMPORTED,
    LEDGER_COLUMNS,
    AgentRecord,
    Run,
    Trial,
    TrialStatus,
)
from overnight.store import Store, open_store, store_exists, store_url


@dataclass
class LabStore:
    """A lab's store opened for reading, and the lab's name in it."""

    root: Path
    name: str
    store: Store
    org: Org | None
    """None when overnight.toml does not load; `config_error` says why."""
    config_error: ConfigError | None = None

    @property
    def warning(self) -> str | None:
        """What to tell a user reading the store without a valid config, or None."""
        if self.config_error is None:
            return None
        return (
            f"{self.config_error}\n  showing what the store holds for lab {self.name!r} "
            "anyway (with the config its run started with); fix the config before "
            "`overnight run`."
        )

    def close(self) -> None:
        self.store.close()


@dataclass
class LabView:
    """A lab's latest run, opened for reading."""

    lab: LabStore
    run: Run
    config: OrgConfig
    """overnight.toml as it is, or the run's own record of it when the file does not load."""

    @property
    def root(self) -> Path:
        return self.lab.root

    @property
    def store(self) -> Store:
        return self.lab.store

    def close(self) -> None:
        self.lab.close()


def open_lab_store(root: Path) -> LabStore:
    """The lab's store and name; with a config that does not load, read by the store alone
    (the config's own error is raised when there is no store to fall back on)."""
    root = root.resolve()
    try:
        org = load_org(root)
    except ConfigError as exc:
        url = store_url(root)
        if not (root / CONFIG_FILE).is_file() or not store_exists(url):
            raise  # no lab here, or one that never ran: nothing to show but the error
        store = open_store(url)
        name = _name_without_config(root / CONFIG_FILE, store)
        if name is None:
            store.close()
            raise
        return LabStore(root, name, store, None, exc)
    return LabStore(root, org.config.lab.name, open_store(store_url(org.root)), org)


def _name_without_config(path: Path, store: Store) -> str | None:
    """The file's raw `[lab] name` when it is still TOML and the store has runs of it;
    otherwise the one lab the store holds (None when that does not tell)."""
    labs = store.labs()
    try:
        lab = tomllib.loads(path.read_text(encoding="utf-8")).get("lab")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        lab = None
    name = lab.get("name") if isinstance(lab, dict) else None
    if isinstance(name, str) and name in labs:
        return name
    return labs[0] if len(labs) == 1 else None


def open_view(root: Path) -> LabView:
    lab = open_lab_store(root)
    try:
        run = lab.store.latest_run(lab.name)
        if run is None:
            raise UserError(
                f"{lab.root}: lab {lab.name!r} has no run yet.\n"
                f"  fix: start one with `overnight run {lab.root}`."
            )
        if lab.org is not None:
            return LabView(lab, run, lab.org.config)
        try:
            config = OrgConfig.model_validate(dict(run.config))
        except ValidationError:
            # recorded by another version of overnight: nothing left to read the run by
            assert lab.config_error is not None
            raise lab.config_error from None
        return LabView(lab, run, config)
    except BaseException:
        lab.close()
        raise


def columns(config: OrgConfig) -> list[str]:
    """The ledger's columns: autoresearch's five (its analysis reads them by name), then
    overnight's, then each `[lab] record` value; with a hidden holdout, its metric and the
    keep's flag last."""
    lab = config.lab
    names = [
        *(c.format(metric=lab.metric) for c in AUTORESEARCH_COLUMNS),
        *LEDGER_COLUMNS,
        *lab.record,
    ]
    if lab.holdout:
        names += [holdout_column(config), "flag"]
    return names


def rows(view: LabView) -> list[dict[str, str]]:
    """Every finished trial of the run, a cell per column, as `overnight ledger` shows it.

    A row autoresearch would call a crash says `0.000000` and `0.0` in its metric and
    memory_gb, as autoresearch writes them; its real figures, if any, stay in the store."""
    cfg = view.config.lab
    costs = trial_costs(view.store, view.run.id)
    out = []
    for t in view.store.trials(view.run.id):
        if not t.status.final:
            continue
        spent = costs.get(t.number, TrialCost(0, None, False))
        status = AUTORESEARCH_STATUS[t.status]
        crash = status == "crash"
        row = {
            "commit": (t.candidate_commit or "")[:7],
            cfg.metric: "0.000000" if crash or t.metric is None else f"{t.metric:.6f}",
            "memory_gb": "0.0" if crash or t.memory_gb is None else _gigabytes(t.memory_gb),
            "status": status,
            "description": t.description,
            "trial": str(t.number),
            "agent": t.agent,
            "outcome": t.status.value,
            "parent": t.parent_commit[:7],
            "duration_s": f"{t.duration_s:.1f}" if t.duration_s is not None else "",
            "tokens": str(spent.tokens),
            "cost_usd": f"{spent.cost_usd:.6f}" if spent.cost_usd is not None else "",
            "reason": t.reason or "",
            "log": t.log_path or "",
        }
        for name in cfg.record:
            value = t.recorded.get(name)
            row[name] = "" if value is None else f"{value:.10g}"
        if cfg.holdout:
            row[holdout_column(view.config)] = (
                f"{t.holdout_metric:.6f}" if t.holdout_metric is not None else ""
            )
            row["flag"] = t.flag or ""
        out.append({k: _cell(v) for k, v in row.items()})
    return out


def _gigabytes(value: float) -> str:
    # autoresearch's one decimal, unless that would say 0.0 (its crash rows' value) of a
    # run that used a few MB: a CPU experiment's peak RSS is often under 0.1 GB
    return f"{value:.1f}" if value >= 0.05 else f"{value:.3f}"


def tsv(view: LabView) -> str:
    """The ledger as autoresearch's results.tsv (its five columns first), then ours."""
    names = columns(view.config)
    out = io.StringIO()
    out.write("\t".join(names) + "\n")
    for row in rows(view):
        out.write("\t".join(row[name] for name in names) + "\n")
    return out.getvalue()


def holdout_column(config: OrgConfig) -> str:
    """The holdout metric's column: `holdout_<name>`, never the metric's own name (by
    default the holdout prints the same name, and a table cannot have it twice)."""
    return f"holdout_{config.lab.holdout_name}"


def _cell(value: str) -> str:
    return " ".join(value.replace("\t", " ").splitlines())


def status(view: LabView) -> dict[str, Any]:
    """Everything `overnight status` shows, as plain data."""
    from overnight.lab.resume import requeues  # the run's machinery: not for `overnight costs`

    run, store, cfg = view.run, view.store, view.config
    trials = store.trials(run.id)
    counts = Counter(t.status.value for t in trials)
    best = best_trial(store, run, cfg)
    baseline = next(
        (t for t in trials if t.agent == BASELINE and t.status is TrialStatus.kept), None
    )
    agents = store.agents(run.id)
    pid = holder(view.root)
    in_flight = [t for t in trials if not t.status.final]
    # With no process running the lab, what is in flight stopped with it (all but the
    # trials of an agent's own `overnight try`, which outlives `overnight run` and holds
    # that agent's lock): the next start marks them interrupted and re-queues them.
    stopped = (
        []
        if pid
        else [t.number for t in in_flight if not AgentLock(view.root, run.id, t.agent).held()]
    )
    again = {t.number for t in requeues(trials, stopped)}
    improvement = None
    if best and baseline and best.metric is not None and baseline.metric:
        improvement = (best.metric - baseline.metric) / abs(baseline.metric) * 100
    keeper = best_holder(agents, best)
    best_branch = keeper.branch if keeper is not None else None
    lab_name = cfg.lab.name
    spenders = sorted({a.name for a in agents} | set(store.key_hashes(lab_name).values()))
    spent: dict[str, float] = {}  # the lab's, every run's: from the cost rollup
    for g in store.cost_groups(lab_name):
        spent[g.agent] = spent.get(g.agent, 0.0) + g.cost_usd
    return {
        **_keeps(view, trials, baseline),
        "lab": cfg.lab.name,
        "run": run.id,
        "base_commit": run.base_commit,
        "running_pid": pid,
        "metric": cfg.lab.metric,
        "goal": cfg.lab.goal.value,
        "trials": {
            "total": sum(1 for t in trials if t.status.final and t.agent != BASELINE),
            "by_status": dict(sorted(counts.items())),
        },
        "baseline": baseline.metric if baseline else None,
        "best": (
            {
                "trial": best.number,
                "metric": best.metric,
                "commit": best.candidate_commit,
                "agent": best.agent,
                "branch": best_branch,
                "description": best.description,
                "holdout_metric": best.holdout_metric,
                "flag": best.flag,
            }
            if best
            else None
        ),
        "improvement_pct": improvement,
        "stopped": how_stopped(store, run.id, pid),
        "agents": [
            {
                "name": a.name,
                "runtime": a.runtime,
                "state": a.state,
                "state_since": a.state_since,
                "reason": _reason(store, run.id, a.name),
                "branch": a.branch,
                "best_metric": a.best_metric,
                "best_trial": a.best_trial,
                "trials": sum(1 for t in trials if t.agent == a.name and t.status.final),
                "kept": sum(
                    1 for t in trials if t.agent == a.name and t.status is TrialStatus.kept
                ),
            }
            for a in agents
        ],
        "spend_usd": {
            "total": sum(spent.values()),
            "by_agent": {name: spent.get(name, 0.0) for name in spenders},
        },
        "running": [
            {"trial": t.number, "agent": t.agent, "status": t.status.value, "since": t.started_at}
            for t in in_flight
            if t.number not in stopped
        ],
        "interrupted": [
            {
                "trial": t.number,
                "agent": t.agent,
                "status": t.status.value,
                "since": t.started_at,
                "requeued": t.number in again,
                "why": _requeue_why(t, t.number in again),
            }
            for t in in_flight
            if t.number in stopped
        ],
        "config_error": str(view.lab.config_error) if view.lab.config_error else None,
        "imported": imported_history(trials, cfg),
        # where the spending is heading, while the run runs (a stopped run burns nothing)
        "forecast": run_forecast(store, cfg, run).as_dict() if pid and cfg.gateway else None,
    }


def best_holder(agents: Sequence[AgentRecord], best: Trial | None) -> AgentRecord | None:
    """The agent whose branch holds the lab's best: the one that found it, before any that
    moved there (sharing)."""
    holders = [a for a in agents if best is not None and a.best_trial == best.number]
    return next((a for a in holders if best and a.name == best.agent), None) or next(
        iter(holders), None
    )


def _reason(store: Store, run_id: str, agent: str) -> str | None:
    """Why the agent is in its state, as its latest `agent.state` event says (a pause's
    reason: a person, a cost anomaly with its figures, a brownout, a crash streak)."""
    last = store.last_event(run_id, ["agent.state"], agent=agent)
    reason = last.payload.get("reason") if last is not None else None
    return reason if isinstance(reason, str) else None


def how_stopped(store: Store, run_id: str, pid: int | None) -> dict[str, Any] | None:
    """How the run last stopped, or is stopping: the rule and what it means (None while it
    runs with no rule fired yet, or before it ever ran)."""
    last = store.last_event(run_id, ["run.started", "run.resumed", STOPPING, "run.stopped"])
    if last is None:
        return None
    if last.kind in ("run.started", "run.resumed"):
        if pid is not None:
            return None
        return {
            "rule": None,
            "detail": "overnight stopped without saying why (it was killed, or the machine "
            "went down); run it again to resume",
            "at": None,
            "stopping": False,
        }
    return {
        "rule": last.payload.get("rule"),
        "detail": last.payload.get("detail") or "",
        "at": last.at,
        "stopping": last.kind == STOPPING and pid is not None,
    }


def imported_history(trials: list[Trial], config: OrgConfig) -> dict[str, Any] | None:
    """The history a run was started with (`overnight import`), summed up; None if none."""
    imported = [t for t in trials if t.agent == IMPORTED]
    if not imported:
        return None
    kept = [t for t in imported if t.status is TrialStatus.kept and t.metric is not None]
    best = kept[0] if kept else None
    for t in kept[1:]:
        if better(t.metric, best.metric, config.lab.goal):  # type: ignore[arg-type,union-attr]
            best = t
    return {
        "trials": len(imported),
        "file": imported[0].proposal.get("imported"),
        "baseline": imported[0].metric,
        "best": (
            {"trial": best.number, "metric": best.metric, "commit": best.candidate_commit,
             "description": best.description}
            if best
            else None
        ),
    }  # fmt: skip


def _requeue_why(trial: Trial, requeued: bool) -> str:
    from overnight.lab.resume import MAX_REQUEUES

    if requeued:
        return f"re-queued for {trial.agent} when `overnight run` starts again"
    if trial.agent == BASELINE:
        return "not re-queued: the baseline is measured again when `overnight run` starts again"
    if not trial.proposal:
        return f"not re-queued: it was still being proposed; {trial.agent} proposes afresh"
    if trial.proposal.get("via") == "overnight try":
        return f"not re-queued: {trial.agent} tries its own changes (`overnight try`)"
    times = "once" if MAX_REQUEUES == 1 else f"{MAX_REQUEUES} times"
    return f"not re-queued: its proposal was re-queued {times} already"


def _keeps(view: LabView, trials: list[Trial], baseline: Trial | None) -> dict[str, Any]:
    """How far keeps can be trusted: the bar a keep must clear (the noise floor measured
    at the run's start, or the number set), the hidden holdout, and the flagged keeps."""
    lab = view.config.lab
    floor = view.run.noise_floor
    if isinstance(lab.min_delta, int | float):
        min_delta: float | None = float(lab.min_delta)
    else:
        min_delta = float(floor["min_delta"]) if floor else (None if lab.measures_noise else 0.0)
    return {
        "min_delta": min_delta,
        "noise_floor": dict(floor) if floor else None,
        "holdout": (
            {
                "command": lab.holdout,
                "metric": lab.holdout_name,
                "on_divergence": lab.on_divergence.value,
                "baseline": baseline.holdout_metric if baseline else None,
            }
            if lab.holdout
            else None
        ),
        "flagged": [
            {"trial": t.number, "agent": t.agent, "status": t.status.value, "flag": t.flag}
            for t in trials
            if t.flag and t.status.final
        ],
    }


def best_so_far(trials: list[Trial], goal: Any) -> list[tuple[int, float]]:
    """(trial number, best kept metric up to it) for every kept trial, in order."""
    points: list[tuple[int, float]] = []
    best: float | None = None
    for t in trials:
        if t.status is TrialStatus.kept and t.metric is not None:
            if best is None or better(t.metric, best, goal):
                best = t.metric
            points.append((t.number, best))
    return points
