"""A running lab: start or resume a run, keep worktrees and branches honest, run trials.

`Lab` is the service API the CLI (and later the agents and the web page) use.
It owns the order of every step of a trial and writes each one to the store
*before* the side effect it announces, so a kill -9 at any moment loses nothing:
`Lab.start` on the same directory reconciles git with the store, marks what was
in flight `interrupted`, and hands those proposals back to be tried again.
Knows nothing about the CLI, the web page or how proposals are made.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from opentelemetry import trace

from overnight import globs, redaction
from overnight.errors import BaselineFailed, ConfigError, RepoError, UserError
from overnight.lab import cluster, holdout, integrity, preflight, privacy, sandbox
from overnight.lab.disk import FreeSpace, TrialLogs, log_room
from overnight.lab.executor import LocalExecutor
from overnight.lab.git import Git, worktree_of
from overnight.lab.judge import Judge
from overnight.lab.lock import AgentLock, LabLock
from overnight.lab.preflight import StartChecks
from overnight.lab.proposal import Proposal, ProposalError, ProposerUnavailable
from overnight.lab.ratchet import (
    OUTLIER_FACTOR,
    better,
    combined,
    gain,
    improves,
    noise_floor,
    outlier,
    step,
)
from overnight.lab.runner import RunResult, find_marked, kill_marked, run_budgeted
from overnight.markers import AGENT_MARKER, RUN_MARKER, SESSION_MARKER, TRIAL_MARKER
from overnight.org import Org, OrgConfig, constraints, load_org
from overnight.org.config import MEMORY, VRAM, LabConfig, OnDivergence
from overnight.paths import STATE_DIR, StateDir
from overnight.records import BASELINE, IMPORTED, IN_FLIGHT, AgentRecord, Run, Trial, TrialStatus
from overnight.store import Store, open_store, store_url

LOCK_WAIT = 2.0
"""Seconds a trial waits for its agent's lock before saying another trial holds it."""
_tracer = trace.get_tracer("overnight.lab")
MAX_REQUEUES = 1
"""How many times an interrupted proposal is tried again. Once: one that was in flight
at two stops in a row is more likely their cause (an experiment that takes the machine
down) than their victim."""
_S = TrialStatus
NODE_LOST = "its cluster node was lost"
"""How the reason of a trial interrupted by a lost node begins (it is re-queued at once)."""


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


def requeues(trials: Sequence[Trial], stopping: Collection[int] = ()) -> list[Trial]:
    """The trials whose proposals the next start tries again, by their own agents: each
    interrupted one (and each numbered in `stopping`: in flight, as that start will find
    them) with a proposal, not tried again already, and re-queued fewer than
    MAX_REQUEUES times before."""
    retried = {t.requeued_from for t in trials if t.requeued_from is not None}
    by_number = {t.number: t for t in trials}
    out = []
    for trial in trials:
        if trial.status is not _S.interrupted and trial.number not in stopping:
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


@dataclass(frozen=True)
class _Measured:
    metric: float | None
    failure: TrialStatus | None
    reason: str | None
    tail: str
    duration_s: float
    recorded: Mapping[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None


def memory_fields(runs: Sequence[_Measured]) -> dict[str, Any]:
    """What a trial's runs printed besides the metric (the mean of each value over the runs
    that printed it, as the metric is their mean) and its peak memory (the largest): a
    printed peak_vram_mb / 1024, as autoresearch's memory_gb, else the measured peak RSS."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for name, value in run.recorded.items():
            values.setdefault(name, []).append(value)
    rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
    peak_rss = max(rss) if rss else None
    vram = values.get(VRAM)
    memory = max(vram) / 1024 if vram else (peak_rss / 1024 if peak_rss is not None else None)
    return {
        "recorded": {name: sum(v) / len(v) for name, v in values.items()},
        "memory_gb": memory,
        "peak_rss_mb": peak_rss,
    }


class Lab:
    """One run of a lab, held exclusively by this process until `close()`."""

    def __init__(
        self,
        org: Org,
        git: Git,
        store: Store,
        run: Run,
        lock: LabLock | None,
        warnings: Sequence[str],
        resumed: bool,
    ) -> None:
        self.org = org
        self.config = org.config
        self.git = git
        self.store = store
        self.run = run
        self.lock = lock
        self._stop_recorded = False
        self.warnings = list(warnings)
        self.resumed = resumed
        lab = org.config.lab
        self.paths = StateDir.of(org.root)
        self.state_dir = self.paths.path
        self.executor = LocalExecutor(lab.parallel, self.paths.slots, lab.gpus_per_trial)
        self.cluster = cluster.of(org.config, org.config_path)
        """`[executor] kind = "ray"`: where experiments run instead of this machine's slots."""
        self.requeued: list[Trial] = []
        self.judge: Judge | None = None
        """Governance, asked before a change runs and before it is kept (None: nobody asks)."""
        self.deadline: float | None = None
        """When this run stops starting trials (time.monotonic(), the `--for` rule): a trial
        waiting for free disk space gives up then."""
        self.trial_logs = TrialLogs(self.paths.logs, lab.max_logs)
        self.free_space = FreeSpace(
            self.state_dir, lab.min_free_disk,
            lambda kind, payload: store.append_event(run.id, kind, payload),
        )  # fmt: skip
        self.holdout: holdout.Holdout | None = None
        if lab.holdout:
            where = self.paths.holdout(run.id)
            self.holdout = holdout.Holdout(
                org.root, git, lab.holdout, lab.holdout_name, lab.hidden, where
            )
        _register_secrets(self.config, self.paths)

    # -- walls around what we run but do not trust ---------------------------

    @functools.cached_property
    def sandboxed(self) -> bool:
        """Whether experiments and agents' CLIs run in bubblewrap (see `lab.sandbox`)."""
        return self.config.lab.sandbox != "none" and sandbox.bwrap_problem() is None

    def untrusted_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The environment of an experiment or an agent's CLI: the allowlist, `[lab] env`,
        then `extra`; never a variable a gateway credential is read from."""
        envs, _files = credential_sources(self.config)
        return sandbox.environment(os.environ, self.config.lab.env, never=envs, extra=extra)

    def hidden_paths(self) -> tuple[Path, ...]:
        _envs, files = credential_sources(self.config)
        found = holdout.paths_to_hide(self.org.root, self.config.lab.hidden)
        return (*sandbox.hidden_paths(self.state_dir, files), *found)

    def experiment_wrap(self, worktree: Path, seconds: float) -> list[str]:
        """What an experiment's shell runs inside: the sandbox, which dies with us, or
        else the watchdog that enforces `seconds` should we die first."""
        lab = self.config.lab
        if not self.sandboxed:
            return sandbox.watchdog(seconds)
        walls = sandbox.Walls(
            cwd=worktree,
            writable=(worktree, *(Path(p).expanduser() for p in lab.writable)),
            hidden=self.hidden_paths(),
            visible=(self.org.root, Path(sys.prefix), *self._command_homes()),
            network=lab.network,
        )
        return walls.argv()

    def _command_homes(self) -> list[Path]:
        """Where the lab's commands' programs live (a venv's folder for `venv/bin/python`),
        shown again in the sandbox should they be under the /tmp it replaces."""
        lab, homes = self.config.lab, []
        for command in (lab.run, lab.evaluate, lab.holdout):
            try:
                words = shlex.split(command or "")
            except ValueError:
                continue
            found = shutil.which(words[0]) if words else None
            if found:
                program = Path(found).absolute().parent
                homes.append(program.parent if program.name == "bin" else program)
        return homes

    # -- start / resume -----------------------------------------------------

    @classmethod
    def attach(cls, path: Path) -> tuple[Lab, str]:
        """The lab and agent of an agent's worktree (`path` anywhere inside it), for
        `overnight try`: the run's store and git, without the lab's lock, so it
        works beside `overnight run` (or after it stopped). Returns (lab, agent)."""
        root, run_id, agent = worktree_of(path)
        top = StateDir.of(root).worktree(run_id, agent)
        org = load_org(root)
        store = open_store(store_url(root))
        try:
            run = store.get_run(run_id)
            names = {a.name for a in store.agents(run_id)} if run is not None else set()
            if run is None or agent not in names:
                raise UserError(
                    f"{top}: run {run_id} has no agent {agent!r} in {root}.\n"
                    "  fix: this worktree belongs to an old run; work in the one "
                    f"`overnight status {root}` lists."
                )
            lab = cls(org, Git(root), store, run, None, [], True)
        except BaseException:
            store.close()
            raise
        return lab, agent

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        checks: StartChecks,
        new_run: bool = False,
        base_ref: str | None = None,
    ) -> Lab:
        """Validate everything (`checks` asks what the lab cannot know itself, see
        `overnight.lab.preflight`), take the lab's lock, and start or resume its run.

        A new run starts from HEAD, or from `base_ref` (any commit or branch, e.g. an
        autoresearch run's `autoresearch/<tag>`); the lab's definition (overnight.toml,
        program.md) is always the checkout's. Without `new_run`, `base_ref` must be where
        the latest run started: that run is resumed.
        """
        root = root.resolve()
        org = load_org(root)
        git = Git.open(root)
        top = Path(git.run("rev-parse", "--show-toplevel").strip()).resolve()
        if top != root:
            raise RepoError(
                f"{root}: overnight.toml must sit at the top of its git repository ({top}).\n"
                f"  fix: move overnight.toml and {org.config.lab.program} to {top}."
            )
        lock = LabLock(root)
        lock.acquire()
        try:
            privacy.make_private(StateDir.of(root).path)  # state an older version left readable
            git.exclude(f"/{STATE_DIR}/")
            holdout.ignore_hidden(git, org.config.lab.hidden)
            base = preflight.resolve(git, base_ref) if base_ref is not None else None
            warnings = (
                preflight.check(org, git, base, checks)
                + preflight.sandbox_warnings(org)
                + preflight.keep_warnings(org)
            )
            if base is not None:
                warnings += preflight.from_warnings(git, base_ref or base, base)
            remote = cluster.of(org.config, org.config_path)
            if remote is not None:
                remote.connect()  # an unreachable cluster is said before any run begins
            store = open_store(store_url(root))
            try:
                lab = cls._open_run(org, git, store, lock, warnings, new_run, base_ref, base)
                if lab.cluster is not None:
                    lab._reap_cluster()
                lab._recover()
            except BaseException:
                store.close()
                raise
            return lab
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_run(
        cls,
        org: Org,
        git: Git,
        store: Store,
        lock: LabLock,
        warnings: list[str],
        new_run: bool,
        base_ref: str | None = None,
        base: str | None = None,
    ) -> Lab:
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
        resumed = run is not None
        changed = _diff_keys(dict(run.config), fingerprint) if run is not None else []
        if run is not None and changed:
            raise ConfigError(
                org.config_path,
                f"changed since run {run.id} began ({', '.join(changed)}); a run keeps one "
                "definition of its lab so its trials stay comparable",
                fix=f"start a new run from HEAD with `overnight run --new {org.root}`, "
                "or restore the old values to resume",
            )
        if run is None:
            base = base or git.head()
            files = git.tracked_files(base)
            protected = {
                path: blob
                for path, blob in files.items()
                if globs.matches(path, org.config.lab.protected)
            }
            run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            while store.get_run(run_id) is not None:
                time.sleep(1.0)
                run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            run = store.create_run(run_id, lab_name, base, protected, fingerprint)
        return cls(org, git, store, run, lock, warnings, resumed)

    def _recover(self) -> None:
        """Make git agree with the store and hand back what was in flight."""
        run = self.run
        # An agent whose lock is held is mid-trial in a live `overnight try` (its
        # session outlived the last run): its trial and experiment are left alone.
        busy = {a.name for a in self.agents() if self.agent_lock(a.name).held()}

        # An external agent's own processes (not its experiments) live in its terminal
        # session, which outlives us on purpose: the supervisor re-attaches to it, and
        # its worktree (perhaps holding unsubmitted work) is left as it is.
        def in_session(env: dict[str, str]) -> bool:
            return SESSION_MARKER in env and TRIAL_MARKER not in env

        live = {
            env.get(AGENT_MARKER) for _pid, env in find_marked(RUN_MARKER, run.id)
            if in_session(env)
        }  # fmt: skip
        kill_marked(
            RUN_MARKER,
            run.id,
            spare=lambda env: env.get(AGENT_MARKER) in busy or in_session(env),
        )
        for trial in self.store.trials(run.id, statuses=IN_FLIGHT):
            if trial.agent in busy:
                continue
            self.store.update_trial(
                trial.id,
                _S.interrupted,
                reason=f"overnight stopped while the trial was {trial.status.value}",
                finished_at=time.time(),
            )
        existing = {a.name: a for a in self.store.agents(run.id)}
        lab_best = self.best()
        for name, agent_cfg in self.config.agent_names():
            if name not in existing:
                start_commit = lab_best.candidate_commit if lab_best else run.base_commit
                self.store.put_agent(
                    AgentRecord(
                        run_id=run.id,
                        name=name,
                        runtime=agent_cfg.runtime,
                        branch=f"overnight/{run.id}/{name}",
                        worktree=str(self.paths.worktree(run.id, name)),
                        best_commit=start_commit or run.base_commit,
                        best_metric=lab_best.metric if lab_best else None,
                        best_trial=lab_best.number if lab_best else None,
                    )
                )
        for agent in self.agents():
            if agent.name in live or agent.name in busy:
                continue
            if agent.state != "idle":  # it was working when the last run died
                self.store.set_agent_state(run.id, agent.name, "idle", recovered=True)
            self.git.update_ref(f"refs/heads/{agent.branch}", agent.best_commit)
            worktree = self.git.add_worktree(Path(agent.worktree), agent.best_commit)
            worktree.checkout_detached(agent.best_commit)
            worktree.reset_clean(agent.best_commit)
        if self.holdout is not None:
            self.holdout.sweep()  # a checkout with the hidden files in it, left by a crash
        self.requeued = self._to_requeue()
        self.store.append_event(
            run.id,
            "run.resumed" if self.resumed else "run.started",
            {"pid": os.getpid(), "requeued": [t.number for t in self.requeued]},
        )

    def _to_requeue(self) -> list[Trial]:
        return requeues(self.store.trials(self.run.id))

    def stopped(self, why: Mapping[str, Any] | None = None) -> None:
        """Record that this run stopped (once; only the process that started it does), and
        `why`: the stop rule that ended it (`overnight.lab.stop.Stop.payload`).

        `overnight run` calls it while its command center still runs, so the run's
        audit follower takes the stop into the chain before it closes; `close` calls it
        too, for a run that ends another way.
        """
        if self.lock is not None and not self._stop_recorded:
            self._stop_recorded = True
            self.store.append_event(self.run.id, "run.stopped", {"pid": os.getpid(), **(why or {})})

    def close(self) -> None:
        self.stopped()
        self.store.close()
        if self.lock is not None:
            self.lock.release()

    def agent_lock(self, name: str) -> AgentLock:
        return AgentLock(self.org.root, self.run.id, name)

    # -- views ----------------------------------------------------------------

    def agents(self) -> list[AgentRecord]:
        return self.store.agents(self.run.id)

    def agent(self, name: str) -> AgentRecord:
        for agent in self.agents():
            if agent.name == name:
                return agent
        raise KeyError(name)

    def best(self) -> Trial | None:
        return best_trial(self.store, self.run, self.config)

    def baseline(self) -> Trial | None:
        for trial in self.store.trials(self.run.id, agent=BASELINE, statuses=[_S.kept]):
            return trial
        return None

    @property
    def min_delta(self) -> float:
        """What a keep must beat the best by: `[lab] min_delta` when it is a number, else
        the noise floor measured at the run's start (0 until it is, and when it is not)."""
        wanted = self.config.lab.min_delta
        if isinstance(wanted, int | float):
            return float(wanted)
        return float(self.run.noise_floor["min_delta"]) if self.run.noise_floor else 0.0

    # -- trials ---------------------------------------------------------------

    def ensure_baseline(self, stop: threading.Event) -> Trial | None:
        """Measure the unchanged code once per run; every agent's ratchet starts there.

        Returns None if stopped first; raises BaselineFailed if it cannot be measured.
        """
        done = self.baseline()
        if done is None:
            first = self.agents()[0]
            proposal = Proposal("baseline", {"baseline": True}, apply=lambda _root: None)
            trial = self._run_trial(
                BASELINE, Path(first.worktree), self.run.base_commit, None, proposal, stop
            )
            trial = self._again_if_lost(
                trial, BASELINE, Path(first.worktree), self.run.base_commit, None, stop
            )
            if trial.status is _S.interrupted:
                return None
            if trial.status is not _S.kept:
                raise BaselineFailed(_baseline_message(self, trial))
            done = trial
        for agent in self.agents():
            if agent.best_metric is None:
                self.store.set_agent_best(
                    self.run.id, agent.name, self.run.base_commit, done.metric, done.number
                )
        return done

    def run_trial(
        self,
        agent_name: str,
        proposal: Proposal | Callable[[Trial], Proposal],
        stop: threading.Event,
    ) -> Trial:
        """Propose -> apply -> check -> run -> measure -> keep or discard, for one agent.

        `proposal` may be a function of the new trial (numbered, still without a
        description), so a proposer can tag its LLM calls with the trial; when it
        raises ProposalError the trial is `crashed` with the error's data kept.
        """
        lock = self.agent_lock(agent_name)
        # A flock is shared with any child forked while it is held, until that child's
        # exec closes it: a subprocess another thread is starting just as this agent's
        # last trial let go still holds the lock for a moment. Wait that moment out.
        if not lock.acquire(wait=LOCK_WAIT):
            raise UserError(
                f"agent {agent_name!r} already has a trial running (one at a time per agent).\n"
                "  fix: wait for its result, then try again."
            )
        try:
            agent = self.agent(agent_name)
            with _tracer.start_as_current_span(
                "overnight.trial", attributes={"overnight.agent": agent_name}
            ) as span:
                trial = self._run_trial(
                    agent_name,
                    Path(agent.worktree),
                    agent.best_commit,
                    agent.best_metric,
                    proposal,
                    stop,
                    branch=agent.branch,
                )
                trial = self._again_if_lost(
                    trial, agent_name, Path(agent.worktree), agent.best_commit,
                    agent.best_metric, stop, branch=agent.branch,
                )  # fmt: skip
                if span.is_recording():
                    span.set_attributes(
                        {
                            "overnight.trial": trial.number,
                            "overnight.correlation": f"{self.run.id}:{trial.number}",
                            "overnight.trial.status": trial.status.value,
                        }
                    )
                    if trial.metric is not None:
                        span.set_attribute("overnight.metric", trial.metric)
                return trial
        finally:
            lock.release()

    def try_worktree(
        self,
        agent_name: str,
        description: str,
        stop: threading.Event,
        on_trial: Callable[[Trial], None] | None = None,
    ) -> Trial:
        """`overnight try`: the agent's uncommitted (or committed) work in its worktree
        becomes a trial: committed, checked, run, measured, kept or reset. `on_trial`
        hears of the trial as soon as it is numbered."""
        agent = self.agent(agent_name)
        if self.baseline() is None:
            raise UserError(
                "the lab's baseline has not been measured yet, so there is nothing to compare "
                "with.\n  fix: wait until `overnight run` has measured it, then try again."
            )
        wt = Git(Path(agent.worktree))
        if not wt.dirty() and wt.head() == agent.best_commit:
            raise UserError(
                "nothing to try: the worktree is exactly the best commit.\n"
                "  fix: edit the editable files first, then run `overnight try` again."
            )
        text = description.strip()
        if not text:
            raise UserError('a trial needs a description.\n  fix: overnight try "what you changed"')
        proposal = Proposal(text, {"via": "overnight try"}, apply=lambda _root: None)

        def numbered(trial: Trial) -> Proposal:
            if on_trial is not None:
                on_trial(trial)
            return proposal

        return self.run_trial(agent_name, numbered, stop)

    def _run_trial(
        self,
        agent_name: str,
        worktree_path: Path,
        parent: str,
        best_metric: float | None,
        proposal: Proposal | Callable[[Trial], Proposal],
        stop: threading.Event,
        branch: str | None = None,
    ) -> Trial:
        lab = self.config.lab
        store = self.store
        wt = Git(worktree_path)
        if isinstance(proposal, Proposal):
            trial = store.add_trial(
                self.run.id,
                agent_name,
                parent,
                proposal.description,
                proposal.data,
                requeued_from=proposal.requeued_from,
            )
        else:
            trial = store.add_trial(self.run.id, agent_name, parent, "", {})
        try:
            if not isinstance(proposal, Proposal):
                try:
                    with _tracer.start_as_current_span(
                        "overnight.proposal",
                        attributes={"overnight.agent": agent_name, "overnight.trial": trial.number},
                    ):
                        proposal = proposal(trial)
                except ProposalError as exc:
                    return store.update_trial(
                        trial.id,
                        _S.crashed,
                        reason=f"no usable proposal: {exc}",
                        proposal=dict(exc.data),
                        finished_at=time.time(),
                    )
                except ProposerUnavailable as exc:
                    store.update_trial(
                        trial.id,
                        _S.interrupted,
                        reason=f"could not propose: {exc}",
                        finished_at=time.time(),
                    )
                    raise
                trial = store.update_trial(
                    trial.id,
                    _S.proposed,
                    description=proposal.description,
                    proposal=dict(proposal.data),
                    requeued_from=proposal.requeued_from,
                )
                if stop.is_set():
                    return store.update_trial(
                        trial.id,
                        _S.interrupted,
                        reason="stopped before it was applied",
                        finished_at=time.time(),
                    )
            # -- apply
            if agent_name == BASELINE:
                candidate = parent
            else:
                try:
                    proposal.apply(wt.path)
                except (ProposalError, OSError, KeyError, ValueError) as exc:
                    return store.update_trial(
                        trial.id,
                        _S.crashed,
                        reason=f"proposal could not be applied: {exc}",
                        finished_at=time.time(),
                    )
                candidate = wt.commit_all(f"overnight trial {trial.number}: {proposal.description}")
            patch, changed = wt.diff(parent, candidate) if candidate != parent else ("", [])
            trial = store.update_trial(trial.id, _S.applied, candidate_commit=candidate, diff=patch)
            # -- check (the integrity guard, before the run)
            reason = integrity.check_diff(changed, lab.editable, lab.protected)
            reason = reason or integrity.check_protected(wt.path, self.run.protected)
            if reason:
                return store.update_trial(
                    trial.id, _S.rejected, reason=f"integrity: {reason}", finished_at=time.time()
                )
            if self.judge is not None and agent_name != BASELINE:
                refusal = self.judge.approve_edits(agent_name, trial, changed, stop)
                if refusal is not None:
                    return store.update_trial(
                        trial.id, _S.rejected, reason=f"policy: {refusal}", finished_at=time.time()
                    )
            trial = store.update_trial(trial.id, _S.checked)
            # -- run and measure: the baseline again to measure the noise floor, a candidate
            # improvement again for `confirm_runs`, or once more when it is an outlier
            metrics: list[float] = []
            measures: list[_Measured] = []
            duration = 0.0
            runs = self._baseline_runs() if agent_name == BASELINE else 1 + lab.confirm_runs
            rerun_outlier = False
            while True:
                measured = self._measure(trial, wt.path, stop)
                duration += measured.duration_s
                measures.append(measured)
                memory = memory_fields(measures)
                if measured.failure is not None:
                    return store.update_trial(
                        trial.id,
                        measured.failure,
                        reason=measured.reason,
                        log_tail=measured.tail,
                        duration_s=duration,
                        finished_at=time.time(),
                        **memory,
                    )
                assert measured.metric is not None
                metrics.append(measured.metric)
                value = combined(metrics)
                trial = store.update_trial(
                    trial.id, _S.measured, metric=value, metrics=metrics, duration_s=duration,
                    **memory,
                )  # fmt: skip
                broken = self._broken_constraint(value, memory)
                better = improves(value, best_metric, lab.goal, self.min_delta)
                if broken and agent_name != BASELINE:
                    break
                if better and len(metrics) == 1 and agent_name != BASELINE:
                    rerun_outlier = self._outlier(trial, value, best_metric)
                    runs = max(runs, 2) if rerun_outlier else runs
                if not better or len(metrics) >= runs:
                    break
            if agent_name == BASELINE and len(metrics) > 1:
                self._record_noise_floor(metrics)
            # the baseline is where every agent starts, whatever it holds: it is kept with
            # the reason, and agents must keep the bound
            kept_why = (
                f"{broken} (kept anyway: the baseline is where every agent starts)"
                if broken and agent_name == BASELINE
                else None
            )
            if broken and agent_name != BASELINE:
                return store.update_trial(
                    trial.id, _S.discarded, reason=broken, finished_at=time.time()
                )
            unconfirmed = [
                m for m in metrics[1:] if not improves(m, best_metric, lab.goal, self.min_delta)
            ]
            if better and rerun_outlier and unconfirmed:
                why = _discard_reason(unconfirmed[0], best_metric, self.min_delta, 1, lab)
                return store.update_trial(
                    trial.id,
                    _S.discarded,
                    reason=f"an outlier (far beyond every improvement so far) that its re-run "
                    f"did not confirm: {why}",
                    finished_at=time.time(),
                )
            # -- the hidden holdout: on the baseline (every later verdict's reference) and
            # on a candidate that would become the lab's best, before the ratchet moves
            concern = None
            if better and self._holdout_due(agent_name, value):
                trial, concern, refused = self._holdout_verdict(trial, candidate, value, stop)
                if refused is not None:
                    status, why = refused
                    return store.update_trial(trial.id, status, reason=why, finished_at=time.time())
            # -- keep or discard: the store first, then the branch follows
            if better and self.judge is not None and agent_name != BASELINE:
                review = concern if lab.on_divergence is OnDivergence.review else None
                refusal = self.judge.approve_keep(
                    agent_name, trial, value, gain(value, best_metric, lab.goal), stop,
                    concern=review,
                )  # fmt: skip
                if refusal is not None:
                    return store.update_trial(
                        trial.id, _S.discarded, reason=f"policy: {refusal}", finished_at=time.time()
                    )
            finished = time.time()
            if better:
                trial = store.update_trial(
                    trial.id,
                    _S.kept,
                    finished_at=finished,
                    **({"reason": kept_why} if kept_why else {}),
                )
                if branch is not None:
                    self.git.update_ref(f"refs/heads/{branch}", candidate)
                return trial
            return store.update_trial(
                trial.id,
                _S.discarded,
                reason=_discard_reason(value, best_metric, self.min_delta, len(metrics), lab),
                finished_at=finished,
            )
        finally:
            final = store.get_trial(trial.id)
            if not final.status.final:
                # an exception of ours mid-trial: record it, then let it raise
                store.update_trial(
                    trial.id, _S.interrupted, reason="overnight error", finished_at=time.time()
                )
            keep_at = (
                final.candidate_commit
                if final.status is _S.kept and final.candidate_commit
                else parent
            )
            wt.reset_clean(keep_at)

    def _measure(self, trial: Trial, root: Path, stop: threading.Event) -> _Measured:
        if self.cluster is not None:
            return self._measure_on_cluster(trial, root, stop)
        lab = self.config.lab
        log_path = self.paths.trial_log(self.run.id, trial.number)
        timeout = lab.budget + lab.grace
        with self.executor.slot(stop) as slot_env:
            if slot_env is None or not self._disk_room(stop):
                return _Measured(None, _S.interrupted, "stopped before it ran", "", 0.0)
            self.store.update_trial(
                trial.id, _S.running, log_path=str(log_path), started_at=time.time()
            )
            env = self.untrusted_env(
                {
                    **slot_env,
                    RUN_MARKER: self.run.id,
                    TRIAL_MARKER: str(trial.number),
                    AGENT_MARKER: trial.agent,
                }
            )
            wrap = self.experiment_wrap(root, timeout)

            def record_pid(pid: int) -> None:
                self.store.update_trial(trial.id, _S.running, pid=pid)

            watch = [*lab.record, *([VRAM] if VRAM not in (*lab.record, lab.metric) else [])]
            result = run_budgeted(
                lab.run, cwd=root, log_path=log_path, timeout_s=timeout, metric=lab.metric,
                env=env, wrap=wrap, max_log=lab.max_log, on_start=record_pid, stop=stop,
                record=watch,
            )  # fmt: skip
            if result.timed_out or stop.is_set():
                self._kill_leftovers(trial)
            step = "run"
            if result.ok and lab.evaluate and not stop.is_set():
                step = "evaluate"
                with log_path.open("a") as fh:
                    fh.write(f"\n[overnight: evaluate: {lab.evaluate}]\n")
                evaluated = run_budgeted(
                    lab.evaluate, cwd=root, log_path=log_path, timeout_s=timeout,
                    metric=lab.metric, env=env, wrap=wrap, max_log=lab.max_log, stop=stop,
                    record=watch,
                )  # fmt: skip
                peaks = [p for p in (result.peak_rss_mb, evaluated.peak_rss_mb) if p is not None]
                result = RunResult(
                    exit_code=evaluated.exit_code,
                    timed_out=evaluated.timed_out,
                    duration_s=result.duration_s + evaluated.duration_s,
                    bytes_out=result.bytes_out + evaluated.bytes_out,
                    truncated=result.truncated or evaluated.truncated,
                    metric=evaluated.metric,
                    tail=evaluated.tail,
                    recorded={**result.recorded, **evaluated.recorded},
                    peak_rss_mb=max(peaks) if peaks else None,
                )
        tampered = integrity.check_protected(root, self.run.protected)
        judged = _judge(result, step, lab.metric, timeout, stop.is_set(), tampered)
        return replace(judged, recorded=result.recorded, peak_rss_mb=result.peak_rss_mb)

    # -- on a Ray cluster (`[executor] kind = "ray"`, see overnight.lab.cluster) ----------

    def _measure_on_cluster(self, trial: Trial, root: Path, stop: threading.Event) -> _Measured:
        """`_measure`, with the experiment a task on the cluster: the candidate commit
        travels there, the log streams back into the trial's log, the protected files'
        hashes come back for the integrity guard."""
        assert self.cluster is not None
        lab = self.config.lab
        log_path = self.paths.trial_log(self.run.id, trial.number)
        timeout = lab.budget + lab.grace
        if not self._disk_room(stop):
            return _Measured(None, _S.interrupted, "stopped before it ran", "", 0.0)
        commit = trial.candidate_commit or Git(root).head()
        markers = {RUN_MARKER: self.run.id, TRIAL_MARKER: str(trial.number)}
        walls = None
        if self.config.lab.sandbox != "none":
            walls = {
                "writable": list(lab.writable),
                "hidden": [str(p) for p in self.hidden_paths()],
                "visible": [str(p) for p in (self.org.root, *self._command_homes())],
                "network": lab.network,
            }
        watch = (*lab.record, *((VRAM,) if VRAM not in (*lab.record, lab.metric) else ()))
        experiment = cluster.Experiment(
            run_id=self.run.id, trial=trial.number, steps=cluster.steps_of(lab),
            metric=lab.metric, record=watch, timeout_s=timeout, max_log=lab.max_log,
            env=self.untrusted_env({**markers, AGENT_MARKER: trial.agent}),
            protected=tuple(self.run.protected), walls=walls,
        )  # fmt: skip
        # written ahead: a resume finds what was sent, and where it started
        self.store.append_event(
            self.run.id, "trial.dispatched",
            {"executor": "ray", "address": self.config.executor.address, "commit": commit},
            agent=trial.agent, trial=trial.number,
        )  # fmt: skip

        def started(where: cluster.Placed) -> None:
            self.store.append_event(
                self.run.id, "trial.placed",
                {"node": where.node, "host": where.host, "task": where.task,
                 "cuda_visible_devices": where.cuda},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
            self.store.update_trial(
                trial.id, _S.running, log_path=str(log_path), started_at=time.time()
            )

        outcome = self.cluster.measure(
            experiment, cluster.archive_of(root, commit), log_path, stop, started
        )
        if outcome.lost is not None:
            placed = outcome.placed
            self.store.append_event(
                self.run.id, "executor.node_lost",
                {"node": placed.node if placed else None, "host": placed.host if placed else None,
                 "why": outcome.lost},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
            return _Measured(None, _S.interrupted, f"{NODE_LOST}: {outcome.lost}", "", 0.0)
        if outcome.result is None:
            return _Measured(None, _S.interrupted, "stopped while running", "", 0.0)
        result = outcome.result
        tampered = integrity.check_hashes(outcome.protected, self.run.protected)
        judged = _judge(result, outcome.step, lab.metric, timeout, stop.is_set(), tampered)
        return replace(judged, recorded=result.recorded, peak_rss_mb=result.peak_rss_mb)

    def _again_if_lost(
        self,
        trial: Trial,
        agent_name: str,
        worktree_path: Path,
        parent: str,
        best_metric: float | None,
        stop: threading.Event,
        branch: str | None = None,
    ) -> Trial:
        """A trial interrupted because its cluster node was lost is re-queued at once (as
        a start re-queues one a stop interrupted): its change, as a new trial; once."""
        for _ in range(MAX_REQUEUES):
            lost = trial.status is _S.interrupted and (trial.reason or "").startswith(NODE_LOST)
            if not lost or stop.is_set():
                break
            again_ok = {t.number for t in requeues(self.store.trials(self.run.id))}
            if agent_name != BASELINE and trial.number not in again_ok:
                break  # an `overnight try`'s, or one without a proposal to try again
            patch = trial.diff or ""

            def apply(root: Path, patch: str = patch) -> None:
                if patch:
                    Git(root).run("apply", "--whitespace=nowarn", input=patch)

            again = Proposal(
                trial.description, dict(trial.proposal or {}), apply=apply,
                requeued_from=trial.number,
            )  # fmt: skip
            trial = self._run_trial(
                agent_name, worktree_path, parent, best_metric, again, stop, branch=branch
            )
        return trial

    def _reap_cluster(self) -> None:
        """On resume: kill on the cluster's nodes what the last `overnight run`'s
        experiments left running (Ray ended their tasks with that process, not the
        process groups the tasks started), naming each node in an event."""
        assert self.cluster is not None
        if not self.resumed:
            return
        for found in self.cluster.reap(self.run.id):
            self.store.append_event(self.run.id, "executor.reaped", found)

    def _broken_constraint(self, metric: float, memory: Mapping[str, Any]) -> str | None:
        """The first `[lab] constraints` the measured values break, said plainly, or None."""
        lab = self.config.lab
        values = {**memory["recorded"], lab.metric: metric}
        if memory["memory_gb"] is not None:
            values[MEMORY] = memory["memory_gb"]
        for text in lab.constraints:
            broken = constraints.parse(text).violation(values)
            if broken:
                return broken
        return None

    def _kill_leftovers(self, trial: Trial) -> None:
        """Kill what is left of a trial's experiment (or holdout) once its process group is
        gone: what left the group (setsid, a daemon) or outlived the kill carries the
        trial's markers."""

        def others(found: dict[str, str]) -> bool:
            return found.get(TRIAL_MARKER) != str(trial.number) or (
                found.get(AGENT_MARKER) != trial.agent
            )

        kill_marked(RUN_MARKER, self.run.id, spare=others)

    # -- keeps that can be trusted: the noise floor, outliers, the hidden holdout --------

    def _baseline_runs(self) -> int:
        """How often the baseline runs: `noise_runs` while the noise floor is still to be
        measured (once per run: a resumed run keeps the one it measured), else once."""
        lab = self.config.lab
        return lab.noise_runs if lab.measures_noise and self.run.noise_floor is None else 1

    def _record_noise_floor(self, runs: list[float]) -> None:
        sigma, floor = noise_floor(runs)
        self.run = self.store.set_noise_floor(
            self.run.id, {"runs": runs, "sigma": sigma, "min_delta": floor}
        )

    def _outlier(self, trial: Trial, value: float, best: float | None) -> bool:
        """Whether an improvement is far beyond every one kept so far in the run (see
        `ratchet.outlier`); if so an `outlier.rerun` event says so before the re-run."""
        goal = self.config.lab.goal
        kept = self.store.trials(self.run.id, statuses=[_S.kept])
        metric_of = {t.candidate_commit: t.metric for t in kept}
        largest = max(
            (
                step(t.metric, metric_of.get(t.parent_commit), goal)
                for t in kept
                if t.agent != BASELINE and t.metric is not None
            ),
            default=0.0,
        )
        improvement = step(value, best, goal)
        if not outlier(improvement, largest, self.min_delta):
            return False
        self.store.append_event(
            self.run.id,
            "outlier.rerun",
            {
                "metric": value, "best": best, "improvement": improvement,
                "largest": largest, "floor": self.min_delta, "factor": OUTLIER_FACTOR,
            },
            agent=trial.agent,
            trial=trial.number,
        )  # fmt: skip
        return True

    def _holdout_due(self, agent_name: str, value: float) -> bool:
        """The holdout measures the baseline, and every candidate that would become the
        lab's best (not one that only beats its own agent's best)."""
        if self.holdout is None:
            return False
        lab_best = self.best()
        if agent_name == BASELINE or lab_best is None or lab_best.metric is None:
            return True
        return better(value, lab_best.metric, self.config.lab.goal)

    def _holdout_reference(self) -> tuple[float | None, float | None]:
        """(metric, holdout metric) of the best kept trial the holdout measured."""
        found: Trial | None = None
        for t in self.store.trials(self.run.id, statuses=[_S.kept]):
            if t.holdout_metric is None or t.metric is None:
                continue
            if found is None or better(t.metric, found.metric or 0.0, self.config.lab.goal):
                found = t
        return (found.metric, found.holdout_metric) if found else (None, None)

    def _holdout_verdict(
        self, trial: Trial, commit: str, value: float, stop: threading.Event
    ) -> tuple[Trial, str | None, tuple[TrialStatus, str] | None]:
        """Run the holdout; returns the trial as it now stands, why its keep looks suspect
        (None: it does not), and the status and reason that end it here (None: go on to
        the judge and the keep, flagged or not)."""
        trial, concern = self._run_holdout(trial, commit, value, stop)
        lab = self.config.lab
        no_reviewer = lab.on_divergence is OnDivergence.review and self.judge is None
        if stop.is_set():
            return trial, concern, (_S.interrupted, "stopped while the holdout ran")
        if trial.agent == BASELINE and concern:
            return trial, concern, (_S.rejected, f"holdout: {concern}")
        if concern and (lab.on_divergence is OnDivergence.reject or no_reviewer):
            return trial, concern, (_S.rejected, f"holdout: {holdout.AGENT_REASON}")
        return trial, concern, None

    def _run_holdout(
        self, trial: Trial, commit: str, value: float, stop: threading.Event
    ) -> tuple[Trial, str | None]:
        """Run the holdout on `commit` and record what it says: the trial with its holdout
        metric (and flag), and why the keep looks suspect (None when it does not)."""
        assert self.holdout is not None
        lab = self.config.lab
        before, reference = self._holdout_reference()
        log_path = self.paths.trial_log(self.run.id, trial.number, holdout=True)
        timeout = lab.budget + lab.grace
        with self.executor.slot(stop) as slot_env:
            if slot_env is None:
                return trial, None  # stopped
            self.store.append_event(
                self.run.id, "holdout.started", {"commit": commit, "log": str(log_path)},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
            env = self.untrusted_env(
                {
                    **slot_env,
                    RUN_MARKER: self.run.id,
                    TRIAL_MARKER: str(trial.number),
                    AGENT_MARKER: trial.agent,
                }
            )
            measured = self.holdout.measure(
                commit, f"trial-{trial.number:05d}", log_path=log_path, env=env,
                wrap=lambda checkout: self.experiment_wrap(checkout, timeout),
                timeout_s=timeout, max_log=lab.max_log, stop=stop,
            )  # fmt: skip
            if measured.problem:
                self._kill_leftovers(trial)
        if stop.is_set():
            return trial, None
        self.store.append_event(
            self.run.id,
            "holdout.measured",
            {
                "holdout_metric": measured.metric, "reference": reference,
                "problem": measured.problem, "duration_s": measured.duration_s,
            },
            agent=trial.agent,
            trial=trial.number,
        )  # fmt: skip
        if trial.agent == BASELINE:  # the reference: no verdict, but it must measure
            trial = self.store.update_trial(trial.id, _S.measured, holdout_metric=measured.metric)
            return trial, measured.problem and f"{measured.problem}; its log: {log_path}"
        concern = holdout.divergence(
            lab.metric, before, value, lab.holdout_name, reference, measured, lab.goal
        )
        trial = self.store.update_trial(
            trial.id, _S.measured, holdout_metric=measured.metric, flag=concern
        )
        if concern is not None:
            self.store.append_event(
                self.run.id, "holdout.diverged",
                {"flag": concern, "on_divergence": lab.on_divergence.value},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
        return trial, concern

    def _disk_room(self, stop: threading.Event) -> bool:
        """Room on disk for one more trial: older logs trimmed to fit `max_logs`, then
        wait for `min_free_disk`; False if stopped (or out of time) first."""
        lab = self.config.lab
        live = {
            t.log_path for t in self.store.trials(self.run.id, statuses=IN_FLIGHT) if t.log_path
        }
        self.trial_logs.make_room(
            log_room(lab.max_log, 2 if lab.evaluate else 1, lab.parallel), live
        )
        return self.free_space.wait(stop, self.deadline)


def _judge(
    result: RunResult,
    step: str,
    metric: str,
    timeout: float,
    stopped: bool,
    tampered: str | None,
) -> _Measured:
    if tampered:
        return _Measured(
            None, _S.rejected, f"integrity: the run {tampered}", result.tail, result.duration_s
        )
    if stopped:
        return _Measured(
            None, _S.interrupted, "stopped while running", result.tail, result.duration_s
        )
    if result.timed_out:
        return _Measured(
            None, _S.timed_out, f"{step} killed after {timeout:.0f}s (budget + grace)",
            result.tail, result.duration_s,
        )  # fmt: skip
    if result.exit_code != 0:
        code = result.exit_code
        hint = " (command not found)" if code == 127 else ""
        return _Measured(
            None,
            _S.crashed,
            f"{step} exited with code {code}{hint}",
            result.tail,
            result.duration_s,
        )
    if result.metric is None:
        return _Measured(
            None, _S.crashed, f"no `{metric}: <number>` line in the {step} output",
            result.tail, result.duration_s,
        )  # fmt: skip
    if result.metric != result.metric or result.metric in (float("inf"), float("-inf")):
        return _Measured(
            None, _S.crashed, f"{metric} is {result.metric}", result.tail, result.duration_s
        )
    return _Measured(result.metric, None, None, result.tail, result.duration_s)


def _discard_reason(
    value: float, best: float | None, min_delta: float, runs: int, lab: LabConfig
) -> str:
    confirm = f" (mean of {runs} runs)" if runs > 1 else ""
    ahead = step(value, best, lab.goal)
    if ahead > 0 and not isinstance(lab.min_delta, int | float):
        return (
            f"within noise (±{min_delta:.3g}): {value:.6g}{confirm} beats the best {best:.6g} "
            f"by only {ahead:.3g}"
        )
    delta = f" by more than {min_delta:g}" if min_delta else ""
    return f"{value:.6g}{confirm} does not beat the best {best:.6g}{delta}"


def _baseline_message(lab: Lab, trial: Trial) -> str:
    cfg = lab.config.lab
    if (trial.reason or "").startswith("holdout: "):
        return (
            f"the hidden holdout could not be measured on your unchanged code: "
            f"{(trial.reason or '').removeprefix('holdout: ')}.\n"
            f"  holdout: {cfg.holdout}\n"
            f"  fix: make `{cfg.holdout}` print a line `{cfg.holdout_name}: <number>` when "
            "run in a clean checkout with the hidden files beside it, and run again."
        )
    tail = "\n".join("    " + line for line in (trial.log_tail or "").splitlines()[-15:])
    return (
        f"the baseline (your code, unchanged) could not be measured: {trial.reason}.\n"
        f"  run: {cfg.run}" + (f"\n  evaluate: {cfg.evaluate}" if cfg.evaluate else "") + "\n"
        f"  log: {trial.log_path}\n"
        + (f"  last lines:\n{tail}\n" if tail else "")
        + f"  fix: make `{cfg.run}` finish within budget + grace and print a line "
        f"`{cfg.metric}: <number>`, commit, and run again."
    )


def best_trial(store: Store, run: Run, config: OrgConfig) -> Trial | None:
    """The best kept trial of a run (the baseline counts; an imported history does not:
    its numbers were measured elsewhere), or None."""
    kept = [t for t in store.trials(run.id, statuses=[_S.kept]) if t.agent != IMPORTED]
    if not kept:
        return None
    best = kept[0]
    for trial in kept[1:]:
        if trial.metric is not None and (
            best.metric is None or better(trial.metric, best.metric, config.lab.goal)
        ):
            best = trial
    return best


def credential_sources(config: OrgConfig) -> tuple[list[str], list[str]]:
    """The environment variables and files the gateway's credentials are read from."""
    gateway = config.gateway
    creds = [c for u in gateway.upstreams for c in u.credentials] if gateway else []
    return [c.env for c in creds if c.env], [c.file for c in creds if c.file]


def _register_secrets(config: OrgConfig, state: StateDir) -> None:
    """Every secret this lab's processes may come across, for `redaction.redact`."""
    envs, files = credential_sources(config)
    redaction.register(*(os.environ.get(name) for name in envs))
    # an unreadable one is the gateway's to report when it starts, naming the credential
    paths = [Path(name).expanduser() for name in files]
    keys = state.keys
    if keys.is_dir():
        paths += keys.iterdir()
    for path in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            redaction.register(path.read_text(encoding="utf-8"))
    redaction.register_url_password(os.environ.get("OVERNIGHT_DB"))


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
