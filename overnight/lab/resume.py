"""Starting a run, or resuming one after any stop.

Owns what a run is bound to (`config_fingerprint`: the part of the config its
trials are compared under), finding or creating the run a start continues,
making git agree with the store again after a stop (`recover`: what was in flight
is `interrupted`, leftovers are killed, every agent's worktree is back on its
best commit; on a Ray cluster, its nodes reaped first: `reap_cluster`), and which
interrupted proposals are tried again (`requeues`, and `lost_again` at once for a trial
whose cluster node was lost).
Knows nothing about how trials run or how proposals are made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from overnight import globs
from overnight.errors import ConfigError, UserError
from overnight.lab import cluster
from overnight.lab.git import Git
from overnight.lab.holdout import Holdout
from overnight.lab.keeps import best_trial
from overnight.lab.lock import AgentLock
from overnight.lab.proposal import Proposal
from overnight.lab.runner import find_marked, kill_marked
from overnight.markers import AGENT_MARKER, RUN_MARKER, SESSION_MARKER, TRIAL_MARKER, run_mark
from overnight.org import Org
from overnight.org.config import LabConfig
from overnight.paths import StateDir
from overnight.records import BASELINE, IN_FLIGHT, AgentRecord, Run, Trial, TrialStatus
from overnight.store import Store

MAX_REQUEUES = 1
"""How many times an interrupted proposal is tried again. Once: one that was in flight
at two stops in a row is more likely their cause (an experiment that takes the machine
down) than their victim."""


def config_fingerprint(org: Org) -> dict[str, Any]:
    """The part of the config a run is bound to (agents, the gateway and governance may
    change: every decision records the policy version it was made under)."""
    data = org.config.model_dump(mode="json", by_alias=True)
    data.pop("agents", None)
    data.pop("gateway", None)
    data.pop("governance", None)
    data.pop("notify", None)  # who is told of the run, not how it runs
    data.pop("executor", None)  # which machines run its trials: a run may move to a cluster
    for key in ("max_logs", "min_free_disk"):  # the machine's disk, not the lab: a run
        data["lab"].pop(key, None)  # goes on with new values (and from older versions)
    for key in ("share", "patience", "stop"):  # how agents work together and when a run
        data["lab"].pop(key, None)  # ends: trials stay comparable whatever they say
    # what is shown besides the metric, not how trials are judged: a run goes on with more
    data["lab"].pop("record", None)
    if not data["lab"].get("constraints"):  # none: as a run from before they existed says
        data["lab"].pop("constraints", None)
    return data


def open_run(
    org: Org,
    git: Git,
    store: Store,
    new_run: bool,
    base_ref: str | None = None,
    base: str | None = None,
) -> tuple[Run, bool]:
    """The run a start continues (the lab's latest, unless `new_run`), or a new one from
    `base` (else HEAD) with its protected files' hashes; and whether it is resumed.
    Refuses to resume a run whose definition of the lab has changed since it began."""
    lab_name = org.config.lab.name
    run = None if new_run else store.latest_run(lab_name)
    if run is not None and base is not None and run.base_commit != base:
        raise UserError(
            f"the latest run ({run.id}) started from {run.base_commit[:10]}, not from "
            f"{base_ref} ({base[:10]}), so there is nothing of it to resume.\n"
            f"  fix: `overnight run --new --from {base_ref} {org.root}` starts a new run "
            "from it."
        )
    fingerprint = config_fingerprint(org)
    if run is not None:
        changed = _diff_keys(dict(run.config), fingerprint)
        if changed:
            raise ConfigError(
                org.config_path,
                f"changed since run {run.id} began ({', '.join(changed)}); a run keeps one "
                "definition of its lab so its trials stay comparable",
                fix=f"start a new run from HEAD with `overnight run --new {org.root}`, "
                "or restore the old values to resume",
            )
        return run, True
    base = base or git.head()
    protected = {
        path: blob
        for path, blob in git.tracked_files(base).items()
        if globs.matches(path, org.config.lab.protected)
    }
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while store.get_run(run_id) is not None:
        time.sleep(1.0)
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return store.create_run(run_id, lab_name, base, protected, fingerprint), False


def recover(
    org: Org, git: Git, store: Store, run: Run, holdout: Holdout | None, resumed: bool
) -> list[Trial]:
    """Make git agree with the store and hand back what was in flight: the trials whose
    proposals are tried again. Records `run.started` or `run.resumed`."""
    paths = StateDir.of(org.root)
    # An agent whose lock is held is mid-trial in a live `overnight try` (its
    # session outlived the last run): its trial and experiment are left alone.
    busy = {a.name for a in store.agents(run.id) if AgentLock(org.root, run.id, a.name).held()}

    # An external agent's own processes (not its experiments) live in its terminal
    # session, which outlives us on purpose: the supervisor re-attaches to it, and
    # its worktree (perhaps holding unsubmitted work) is left as it is.
    def in_session(env: dict[str, str]) -> bool:
        return SESSION_MARKER in env and TRIAL_MARKER not in env

    mark = run_mark(org.root, run.id)
    live = {env.get(AGENT_MARKER) for _pid, env in find_marked(RUN_MARKER, mark) if in_session(env)}
    kill_marked(
        RUN_MARKER,
        mark,
        spare=lambda env: env.get(AGENT_MARKER) in busy or in_session(env),
    )
    for trial in store.trials(run.id, statuses=IN_FLIGHT):
        if trial.agent in busy:
            continue
        store.update_trial(
            trial.id,
            TrialStatus.interrupted,
            reason=f"overnight stopped while the trial was {trial.status.value}",
            finished_at=time.time(),
        )
    existing = {a.name for a in store.agents(run.id)}
    lab_best = best_trial(store, run, org.config)
    for name, agent_cfg in org.config.agent_names():
        if name not in existing:
            start_commit = lab_best.candidate_commit if lab_best else run.base_commit
            store.put_agent(
                AgentRecord(
                    run_id=run.id,
                    name=name,
                    runtime=agent_cfg.runtime,
                    branch=f"overnight/{run.id}/{name}",
                    worktree=str(paths.worktree(run.id, name)),
                    best_commit=start_commit or run.base_commit,
                    best_metric=lab_best.metric if lab_best else None,
                    best_trial=lab_best.number if lab_best else None,
                )
            )
    for agent in store.agents(run.id):
        if agent.name in live or agent.name in busy:
            continue
        if agent.state != "idle":  # it was working when the last run died
            store.set_agent_state(run.id, agent.name, "idle", recovered=True)
        git.update_ref(f"refs/heads/{agent.branch}", agent.best_commit)
        worktree = git.add_worktree(Path(agent.worktree), agent.best_commit)
        worktree.checkout_detached(agent.best_commit)
        worktree.reset_clean(agent.best_commit)
    if holdout is not None:
        holdout.sweep()  # a checkout with the hidden files in it, left by a crash
    requeued = requeues(store.trials(run.id))
    store.append_event(
        run.id,
        "run.resumed" if resumed else "run.started",
        {"pid": os.getpid(), "requeued": [t.number for t in requeued]},
    )
    return requeued


def reap_cluster(root: Path, remote: cluster.Cluster, store: Store, run_id: str) -> None:
    """On resume: kill on the cluster's nodes what the last `overnight run`'s experiments
    left running (Ray ended their tasks with that process, not the process groups the
    tasks started), naming each node in an `executor.reaped` event."""
    for found in remote.reap(run_mark(root, run_id)):
        store.append_event(run_id, "executor.reaped", found)


def lost_again(store: Store, trial: Trial) -> Proposal | None:
    """The proposal that runs a trial again at once (its change, as a new trial) when its
    cluster node was lost mid-run, or the cluster went unreachable (the new trial waits for
    it), as a start re-queues one a stop interrupted; None when
    it was not lost, or is not to be tried again (an `overnight try`'s, one re-queued
    already)."""
    lost = trial.status is TrialStatus.interrupted and (trial.reason or "").startswith(
        (cluster.NODE_LOST, cluster.UNREACHABLE)
    )
    if not lost:
        return None
    if trial.agent != BASELINE and trial.number not in {
        t.number for t in requeues(store.trials(trial.run_id))
    }:
        return None
    patch = trial.diff or ""

    def apply(root: Path) -> None:
        if patch:
            Git(root).run("apply", "--whitespace=nowarn", input=patch)

    return Proposal(
        trial.description, dict(trial.proposal or {}), apply=apply, requeued_from=trial.number
    )


def requeues(trials: Sequence[Trial], stopping: Collection[int] = ()) -> list[Trial]:
    """The trials whose proposals the next start tries again, by their own agents: each
    interrupted one (and each numbered in `stopping`: in flight, as that start will find
    them) with a proposal, not tried again already, and re-queued fewer than
    MAX_REQUEUES times before."""
    retried = {t.requeued_from for t in trials if t.requeued_from is not None}
    by_number = {t.number: t for t in trials}
    out = []
    for trial in trials:
        if trial.status is not TrialStatus.interrupted and trial.number not in stopping:
            continue
        if trial.number in retried:
            continue
        if trial.agent == BASELINE:
            continue  # the baseline is re-run by ensure_baseline
        if not trial.proposal:
            continue  # stopped while its change was being thought up: nothing to retry
        if trial.proposal.get("via") == "overnight try":
            continue  # an agent in a terminal: its own session decides what it tries next
        depth, cursor = 0, trial
        while cursor.requeued_from is not None and cursor.requeued_from in by_number:
            depth += 1
            cursor = by_number[cursor.requeued_from]
        if depth < MAX_REQUEUES:
            out.append(trial)
    return out


def _diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_diff_keys(a, b, f"{prefix}{key}."))
        elif a != b and not (key not in old and prefix == "lab." and b == _lab_default(key)):
            # (a [lab] field a later overnight added, at its default, redefines nothing of
            # a run that began before it: that run resumes)
            out.append(prefix + key)
    return out


def _lab_default(name: str) -> Any:
    field = LabConfig.model_fields.get(name)
    if field is None or field.is_required():
        return ...
    default = field.get_default(call_default_factory=True)
    return default.value if isinstance(default, StrEnum) else default
