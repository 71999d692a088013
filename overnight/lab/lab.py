"""A running lab: start or resume a run, and run its trials, stage by stage.

`Lab` is the service API the CLI, the agents and the command center use. It
owns the order of a trial's stages (propose, apply, check, measure, decide) and
writes each one to the store *before* the side effect it announces, so a kill -9
at any moment loses nothing: `Lab.start` on the same directory reconciles git
with the store (`resume`), marks what was in flight `interrupted`, and hands
those proposals back to be tried again. Running an experiment is `experiment`'s
job, what untrusted processes get is `enclosure`'s, and the questions asked of
kept trials are `keeps`'. Knows nothing about the CLI, the web page or how
proposals are made.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

from overnight.errors import BaselineFailed, RepoError, UserError
from overnight.lab import ahead, cluster, holdout, integrity, keeps, preflight, privacy, resume
from overnight.lab.ahead import Prepared
from overnight.lab.enclosure import Enclosure
from overnight.lab.experiment import Experiments, Measured, memory_fields
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
from overnight.org import Org, load_org
from overnight.org.config import OnDivergence
from overnight.paths import STATE_DIR, StateDir
from overnight.records import BASELINE, AgentRecord, Run, Trial, TrialStatus
from overnight.store import Store, open_store, store_url

LOCK_WAIT = 2.0
"""Seconds a trial waits for its agent's lock before saying another trial holds it."""
_tracer = trace.get_tracer("overnight.lab")
_S = TrialStatus


@dataclass
class _Attempt:
    """One trial on its way through the stages: what each stage learns, for the next."""

    agent: str
    worktree: Git
    parent: str
    """The commit the trial starts from: its agent's best."""
    best: float | None
    """Its agent's best metric, which a keep must beat (None: nothing to beat yet)."""
    proposal: Proposal | Callable[[Trial], Proposal]
    stop: threading.Event
    branch: str | None
    """The agent's branch, moved to a kept candidate (None: the baseline's has none)."""
    trial: Trial
    ahead: Prepared | None = None
    """The candidate made ahead on `parent` (`overnight.lab.ahead`): only committed here."""
    made_ahead: bool = False
    """Whether the candidate is the one made ahead (its parent was still the agent's best)."""
    checked_out: bool = True
    """Whether the agent's worktree was moved off `parent` (a cluster's node runs a
    candidate made ahead from its packed files: the worktree stays clean at `parent`)."""
    candidate: str = ""
    changed: list[str] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)
    broken: str | None = None
    """The first `[lab] constraints` the measured values break."""
    improves: bool = False
    """Whether the measured value beats `best` by more than the lab's min_delta."""
    outlier: bool = False
    """Whether the improvement was far beyond every one kept so far (and re-run)."""
    concern: str | None = None
    """Why the hidden holdout disputes the improvement."""
    on_running: Callable[[], None] | None = None
    """Told once its experiment has started (`Lab.run_trial`)."""

    @property
    def baseline(self) -> bool:
        return self.agent == BASELINE

    @property
    def value(self) -> float:
        return combined(self.metrics)


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
        self.requeued: list[Trial] = []
        self._ahead: set[str] = set()
        """Agents whose checkout for changes made ahead this process made (`prepare`)."""
        self.judge: Judge | None = None
        """Governance, asked before a change runs and before it is kept (None: nobody asks)."""
        self.enclosure = Enclosure(org, self.paths)
        """What experiments and agents' CLIs get: their environment, their sandbox."""
        self.holdout: holdout.Holdout | None = None
        if lab.holdout:
            where = self.paths.holdout(run.id)
            self.holdout = holdout.Holdout(
                org.root, git, lab.holdout, lab.holdout_name, lab.hidden, where
            )
        self.experiments = Experiments(
            lab, store, run.id, run.protected, self.paths, self.enclosure, self.holdout,
            cluster.of(org.config, org.config_path),
        )  # fmt: skip

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
                run, resumed = resume.open_run(org, git, store, new_run, base_ref, base)
                lab = cls(org, git, store, run, lock, warnings, resumed)
                if lab.experiments.cluster is not None and resumed:
                    resume.reap_cluster(root, lab.experiments.cluster, store, run.id)
                lab.requeued = resume.recover(org, git, store, run, lab.holdout, resumed)
            except BaseException:
                store.close()
                raise
            return lab
        except BaseException:
            lock.release()
            raise

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
        return keeps.best_trial(self.store, self.run, self.config)

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
        proposal: Proposal | Callable[[Trial], Proposal] | Prepared,
        stop: threading.Event,
        on_running: Callable[[], None] | None = None,
    ) -> Trial:
        """Propose -> apply -> check -> run -> measure -> keep or discard, for one agent.

        `proposal` may be a function of the new trial (numbered, still without a
        description), so a proposer can tag its LLM calls with the trial; when it
        raises ProposalError the trial is `crashed` with the error's data kept. Or it is
        a candidate `prepare`d ahead on the agent's best commit (see `overnight.lab.ahead`).
        `on_running` is called (in this thread) once its experiment has started.
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
                    on_running=on_running,
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

    def prepare(self, agent_name: str, propose: Callable[[Path], Proposal]) -> Prepared:
        """Agent `agent_name`'s next candidate, made ahead on its best commit in a checkout
        of its own (its worktree may be running an experiment); `propose` is given that
        checkout. Its trial is `run_trial(agent_name, prepared, ...)`, which proposes
        afresh instead if the agent has moved on by then."""
        parent = self.agent(agent_name).best_commit
        where = self.paths.ahead(self.run.id, agent_name)
        if agent_name not in self._ahead:  # one a killed run left (a stale index.lock...)
            self.drop_ahead(agent_name)
            self._ahead.add(agent_name)
        packs = self.experiments.cluster is not None  # (what a cluster's node unpacks)
        return ahead.prepare(self.git, where, parent, propose, pack=packs)

    def drop_ahead(self, agent_name: str) -> None:
        """Delete the checkout where the agent's candidates were made ahead, if any."""
        where = self.paths.ahead(self.run.id, agent_name)
        if where.exists():  # (and the run's folder, once its last one is gone)
            self.git.remove_worktree(where, empty_parent=True)

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

    # -- a trial's stages: each returns the trial when it ends there, None to go on ------

    def _run_trial(
        self,
        agent_name: str,
        worktree_path: Path,
        parent: str,
        best_metric: float | None,
        asked: Proposal | Callable[[Trial], Proposal] | Prepared,
        stop: threading.Event,
        branch: str | None = None,
        on_running: Callable[[], None] | None = None,
    ) -> Trial:
        """One trial, numbered at once, through its stages in order until one ends it."""
        proposal: Proposal | Callable[[Trial], Proposal]
        if isinstance(asked, Prepared):
            prepared, proposal = asked, asked.proposal
        else:
            prepared, proposal = None, asked
        if isinstance(proposal, Proposal):
            trial = self.store.add_trial(
                self.run.id, agent_name, parent, proposal.description, proposal.data,
                requeued_from=proposal.requeued_from,
            )  # fmt: skip
        else:
            trial = self.store.add_trial(self.run.id, agent_name, parent, "", {})
        t = _Attempt(
            agent=agent_name, worktree=Git(worktree_path), parent=parent, best=best_metric,
            proposal=proposal, stop=stop, branch=branch, trial=trial, ahead=prepared,
            on_running=on_running,
        )  # fmt: skip
        try:
            return (
                self._propose(t)
                or self._apply(t)
                or self._check(t)
                or self._measure(t)
                or self._decide(t)
            )
        finally:
            self._tidy(t)

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
        for _ in range(resume.MAX_REQUEUES):
            again = None if stop.is_set() else resume.lost_again(self.store, trial)
            if again is None:
                break
            trial = self._run_trial(
                agent_name, worktree_path, parent, best_metric, again, stop, branch=branch
            )
        return trial

    def _propose(self, t: _Attempt) -> Trial | None:
        """Ask for the change, unless it came with the trial: a reply that cannot be used
        crashes the trial; a proposer that cannot think now interrupts it, and raises."""
        ask = t.proposal
        if isinstance(ask, Proposal):
            return None
        try:
            with _tracer.start_as_current_span(
                "overnight.proposal",
                attributes={"overnight.agent": t.agent, "overnight.trial": t.trial.number},
            ):
                proposal = ask(t.trial)
        except ProposalError as exc:
            return self._end(t, _S.crashed, f"no usable proposal: {exc}", proposal=dict(exc.data))
        except ProposerUnavailable as exc:
            self._end(t, _S.interrupted, f"could not propose: {exc}")
            raise
        t.proposal = proposal
        t.trial = self.store.update_trial(
            t.trial.id, _S.proposed, description=proposal.description,
            proposal=dict(proposal.data), requeued_from=proposal.requeued_from,
        )  # fmt: skip
        if t.stop.is_set():
            return self._end(t, _S.interrupted, "stopped before it was applied")
        return None

    def _apply(self, t: _Attempt) -> Trial | None:
        """Apply the change to the agent's worktree and commit it (the baseline's candidate
        is its unchanged parent): a change that does not apply crashes the trial."""
        proposal = t.proposal
        assert isinstance(proposal, Proposal)
        made = t.ahead
        if t.baseline:
            t.candidate = t.parent
        elif made is not None and made.tree is not None and made.parent == t.parent:
            # made ahead: committed now that it is numbered, and checked out to run here
            # (on a cluster its packed files run: two git processes less a trial)
            message = f"overnight trial {t.trial.number}: {proposal.description}"
            t.candidate = t.worktree.commit_tree(made.tree, t.parent, message)
            t.checked_out = made.archive is None
            if t.checked_out:
                t.worktree.run("reset", "-q", "--hard", t.candidate)
            t.trial = self.store.update_trial(
                t.trial.id, _S.applied, candidate_commit=t.candidate, diff=made.patch
            )
            t.changed = list(made.changed)
            t.made_ahead = True
            return None
        else:
            try:
                proposal.apply(t.worktree.path)
            except (ProposalError, OSError, KeyError, ValueError) as exc:
                return self._end(t, _S.crashed, f"proposal could not be applied: {exc}")
            message = f"overnight trial {t.trial.number}: {proposal.description}"
            t.candidate = t.worktree.commit_all(message)
        patch = ""
        if t.candidate != t.parent:
            patch, t.changed = t.worktree.diff(t.parent, t.candidate)
        t.trial = self.store.update_trial(
            t.trial.id, _S.applied, candidate_commit=t.candidate, diff=patch
        )
        return None

    def _check(self, t: _Attempt) -> Trial | None:
        """The integrity guard, then governance, before anything runs: a change outside the
        editable files, or to a protected one, or one the policy refuses, is rejected."""
        lab = self.config.lab
        reason = integrity.check_diff(t.changed, lab.editable, lab.protected)
        reason = reason or integrity.check_protected(t.worktree.path, self.run.protected)
        if reason:
            return self._end(t, _S.rejected, f"integrity: {reason}")
        if self.judge is not None and not t.baseline:
            refusal = self.judge.approve_edits(t.agent, t.trial, t.changed, t.stop)
            if refusal is not None:
                return self._end(t, _S.rejected, f"policy: {refusal}")
        t.trial = self.store.update_trial(t.trial.id, _S.checked)
        return None

    def _measure(self, t: _Attempt) -> Trial | None:
        """Run the experiment: again for the baseline (to measure the noise floor) and for
        a candidate improvement (`confirm_runs`, or once more when it is an outlier). A run
        that fails ends the trial; a broken constraint ends the measuring."""
        lab = self.config.lab
        runs = self._baseline_runs() if t.baseline else 1 + lab.confirm_runs
        measures: list[Measured] = []
        duration = 0.0
        while True:
            packed = t.ahead.archive if t.ahead is not None and t.made_ahead else None
            measured = self.experiments.measure(
                t.trial, t.worktree.path, t.stop, packed, on_running=t.on_running
            )
            duration += measured.duration_s
            measures.append(measured)
            memory = memory_fields(measures)
            if measured.failure is not None:
                return self._end(
                    t, measured.failure, measured.reason, log_tail=measured.tail,
                    duration_s=duration, **memory,
                )  # fmt: skip
            assert measured.metric is not None
            t.metrics.append(measured.metric)
            t.trial = self.store.update_trial(
                t.trial.id, _S.measured, metric=t.value, metrics=t.metrics, duration_s=duration,
                **memory,
            )  # fmt: skip
            t.broken = keeps.broken_constraint(lab, t.value, memory)
            t.improves = improves(t.value, t.best, lab.goal, self.min_delta)
            if t.broken and not t.baseline:
                return None
            if t.improves and len(t.metrics) == 1 and not t.baseline:
                t.outlier = self._outlier(t)
                runs = max(runs, 2) if t.outlier else runs
            if not t.improves or len(t.metrics) >= runs:
                return None

    def _decide(self, t: _Attempt) -> Trial:
        """Keep or discard a measured trial: the store first, then the branch follows."""
        if t.baseline and len(t.metrics) > 1:
            self._record_noise_floor(t.metrics)
        why_not = self._why_not_keep(t)
        if why_not is not None:
            return self._end(t, _S.discarded, why_not)
        ended = self._holdout(t) or self._approve_keep(t)
        if ended is not None:
            return ended
        # the baseline is where every agent starts, whatever it holds: it is kept with
        # the reason, and agents must keep the bound
        kept_why = f"{t.broken} (kept anyway: the baseline is where every agent starts)"
        trial = self._end(t, _S.kept, kept_why if t.broken else None)
        if t.branch is not None:
            self.git.update_ref(f"refs/heads/{t.branch}", t.candidate)
        return trial

    def _tidy(self, t: _Attempt) -> None:
        """However the trial ended: one an error of ours stopped midway is recorded
        `interrupted` (the error then raises), and the worktree is reset clean to the
        commit its agent goes on from."""
        final = self.store.get_trial(t.trial.id)
        if not final.status.final:
            self.store.update_trial(
                t.trial.id, _S.interrupted, reason="overnight error", finished_at=time.time()
            )
        kept = final.candidate_commit if final.status is _S.kept else None
        if t.checked_out or kept:
            t.worktree.reset_clean(kept or t.parent)

    def _end(self, t: _Attempt, status: TrialStatus, reason: str | None, **fields: Any) -> Trial:
        """Record the trial finished with `status` and `reason` (and `fields`)."""
        if reason is not None:
            fields["reason"] = reason
        return self.store.update_trial(t.trial.id, status, finished_at=time.time(), **fields)

    # -- keeps that can be trusted: the noise floor, outliers, the hidden holdout --------

    def _why_not_keep(self, t: _Attempt) -> str | None:
        """Why a measured trial is discarded before anyone is asked (None: it may be kept):
        it breaks a constraint, does not beat the best by enough, or is an outlier its
        re-run did not confirm."""
        lab = self.config.lab
        if t.broken and not t.baseline:
            return t.broken
        if not t.improves:
            return keeps.discard_reason(t.value, t.best, self.min_delta, len(t.metrics), lab)
        unconfirmed = [
            m for m in t.metrics[1:] if not improves(m, t.best, lab.goal, self.min_delta)
        ]
        if t.outlier and unconfirmed:
            why = keeps.discard_reason(unconfirmed[0], t.best, self.min_delta, 1, lab)
            return (
                "an outlier (far beyond every improvement so far) that its re-run did not "
                f"confirm: {why}"
            )
        return None

    def _approve_keep(self, t: _Attempt) -> Trial | None:
        """Governance, asked before the ratchet moves (with the holdout's concern, when the
        lab says `on_divergence = "review"`): a refusal discards the trial."""
        if self.judge is None or t.baseline:
            return None
        lab = self.config.lab
        review = t.concern if lab.on_divergence is OnDivergence.review else None
        refusal = self.judge.approve_keep(
            t.agent, t.trial, t.value, gain(t.value, t.best, lab.goal), t.stop, concern=review
        )
        return None if refusal is None else self._end(t, _S.discarded, f"policy: {refusal}")

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

    def _outlier(self, t: _Attempt) -> bool:
        """Whether an improvement is far beyond every one kept so far in the run (see
        `ratchet.outlier`); if so an `outlier.rerun` event says so before the re-run."""
        largest = keeps.largest_improvement(self.store, self.run.id, self.config.lab.goal)
        improvement = step(t.value, t.best, self.config.lab.goal)
        if not outlier(improvement, largest, self.min_delta):
            return False
        self.store.append_event(
            self.run.id,
            "outlier.rerun",
            {
                "metric": t.value, "best": t.best, "improvement": improvement,
                "largest": largest, "floor": self.min_delta, "factor": OUTLIER_FACTOR,
            },
            agent=t.agent,
            trial=t.trial.number,
        )  # fmt: skip
        return True

    def _holdout(self, t: _Attempt) -> Trial | None:
        """The hidden holdout, on the baseline (every later verdict's reference) and on a
        candidate that would become the lab's best, before the ratchet moves. Ends the
        trial when stopped, when the baseline's holdout cannot be measured, or when a
        divergence is rejected; else leaves its concern, if any, for governance."""
        if not self._holdout_due(t):
            return None
        t.concern = self._run_holdout(t)
        lab = self.config.lab
        no_reviewer = lab.on_divergence is OnDivergence.review and self.judge is None
        if t.stop.is_set():
            return self._end(t, _S.interrupted, "stopped while the holdout ran")
        if t.baseline and t.concern:
            return self._end(t, _S.rejected, f"holdout: {t.concern}")
        if t.concern and (lab.on_divergence is OnDivergence.reject or no_reviewer):
            return self._end(t, _S.rejected, f"holdout: {holdout.AGENT_REASON}")
        return None

    def _holdout_due(self, t: _Attempt) -> bool:
        """The holdout measures the baseline, and every candidate that would become the
        lab's best (not one that only beats its own agent's best)."""
        if self.holdout is None:
            return False
        lab_best = self.best()
        if t.baseline or lab_best is None or lab_best.metric is None:
            return True
        return better(t.value, lab_best.metric, self.config.lab.goal)

    def _run_holdout(self, t: _Attempt) -> str | None:
        """Run the holdout on the candidate and record what it says on the trial (its
        holdout metric, and flag): why the keep looks suspect (None when it does not)."""
        lab = self.config.lab
        before, reference = keeps.holdout_reference(self.store, self.run.id, lab.goal)
        measured = self.experiments.measure_holdout(t.trial, t.candidate, t.stop)
        if measured is None or t.stop.is_set():
            return None
        self.store.append_event(
            self.run.id,
            "holdout.measured",
            {
                "holdout_metric": measured.metric, "reference": reference,
                "problem": measured.problem, "duration_s": measured.duration_s,
            },
            agent=t.agent,
            trial=t.trial.number,
        )  # fmt: skip
        if t.baseline:  # the reference: no verdict, but it must measure
            t.trial = self.store.update_trial(
                t.trial.id, _S.measured, holdout_metric=measured.metric
            )
            return measured.problem and f"{measured.problem}; its log: {measured.log_path}"
        concern = holdout.divergence(
            lab.metric, before, t.value, lab.holdout_name, reference, measured, lab.goal
        )
        t.trial = self.store.update_trial(
            t.trial.id, _S.measured, holdout_metric=measured.metric, flag=concern
        )
        if concern is not None:
            self.store.append_event(
                self.run.id, "holdout.diverged",
                {"flag": concern, "on_divergence": lab.on_divergence.value},
                agent=t.agent, trial=t.trial.number,
            )  # fmt: skip
        return concern


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
