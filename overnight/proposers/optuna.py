"""The `optuna` proposer: sets `[[knobs]]` from an Optuna study kept in the lab's database.

The study lives next to the ledger, named after the run, so a resumed run
continues it. When the agents share (`[lab] share = "best"`, the default with
two or more) they share one study: what one learns, all do (constant-liar TPE
keeps parallel agents from proposing the same point); its random start is 5 draws
per agent drawing from it, as many as they would make alone (a study shared with 5
in all measured worse than two apart on spirals). With `share = "none"`
each agent has a study of its own, named after the run and the agent (a lone
agent keeps the run's). A run resumed with the other `share` value goes on in
the study that value names (so does a run with `share = "none"` recorded before
studies were per agent), seeded with the trials the lab recorded: the agent's
own, or all the optuna agents'.
A TPE draw does not depend on where its agent stands. When the agent moves to
the lab's best (sharing) and the run measured its metric to vary from run to run
(a noise floor with σ > 0, `min_delta = "auto"`), its next proposals explore around
the knobs of that commit instead, as population-based training's explore step
does: a local search from where the agent stands (which moves on with each keep),
until `patience` explore steps in a row found nothing, or every neighbour it may
step to was measured already; then TPE draws again. A step never goes to a point
the study has measured (the steps lie on a lattice: x1.25 then x0.8 comes back).
Every explore step is a trial of the study from the moment it is proposed, like
a TPE draw. On a metric measured
as repeatable, or not measured for noise, the agent goes on drawing from the shared
study, which already knows the lab's best: there a local search only took draws
from TPE (`benchmarks/research.py`, spirals against tsp).
`OVERNIGHT_SEED` makes the draws repeatable (benchmarks, a bug report).
Knows nothing about git or the runner.
"""

from __future__ import annotations

import math
import os
import random
import threading
import warnings
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState

from overnight.errors import UserError
from overnight.lab.proposal import Proposal
from overnight.org import knobs as knob_files
from overnight.org.config import Goal, KnobConfig
from overnight.proposers.base import ProposerSetup
from overnight.proposers.runtime import ProposerRuntime, Register
from overnight.records import Trial, TrialStatus
from overnight.store import open_store

optuna.logging.set_verbosity(optuna.logging.WARNING)

STARTUP = 5
"""Trials an agent's study holds before TPE models it: the baseline and four random draws
(a shared study: the baseline and four random draws per optuna agent drawing from it)."""
_REQUEUE_ATTR = "overnight_requeued_from"
_TRIAL_ATTR = "overnight_trial"
"""On a study trial added from an explore proposal: the lab's trial it was."""
SWITCH_CHOICE = 0.25
"""The chance an explore step switches a choice knob to another of its values."""
STEP = 0.1
"""An explore step moves a linear knob by this share of its range (a log knob: x0.8 or x1.25)."""
EXPLORE_DRAWS = 32
"""Neighbours an explore step draws, at most, looking for one the study has not measured."""
# Optuna pops a WAITING (re-queued) trial with a read-then-write that two threads
# on SQLite can both win; one ask at a time per process keeps every point unique.
_ask_lock = threading.Lock()
SEED_ENV = "OVERNIGHT_SEED"
"""An integer: seeds every optuna agent's sampler and explore steps, so a run can be repeated."""


def agent_seed(agent: str) -> int | None:
    """The seed of `agent`'s draws from `OVERNIGHT_SEED` (None when unset): the seed mixed
    with the agent's name, since agents sharing one study with one seed would draw the
    same random points."""
    text = os.environ.get(SEED_ENV, "").strip()
    if not text:
        return None
    try:
        seed = int(text)
    except ValueError:
        raise UserError(
            f"{SEED_ENV}={text!r} is not a whole number.\n"
            f"  fix: set it to an integer such as {SEED_ENV}=1, or unset it."
        ) from None
    return zlib.crc32(f"{seed}:{agent}".encode())


def distribution(knob: KnobConfig) -> BaseDistribution:
    if knob.choices is not None:
        return CategoricalDistribution(knob.choices)
    assert knob.low is not None and knob.high is not None
    if knob.int_:
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return FloatDistribution(knob.low, knob.high, log=knob.log)


def study_name(run_id: str, agent: str | None = None) -> str:
    """The study of a run's optuna agents when they share (`agent` None), else of one."""
    return f"overnight-{run_id}" if agent is None else f"overnight-{run_id}-{agent}"


class OptunaProposer:
    def __init__(self, setup: ProposerSetup) -> None:
        seed = agent_seed(setup.agent)
        config = setup.config
        # a study of its own when there are others to keep it from (one agent: the run's)
        self.shared = config.shares() or len(config.agent_names()) < 2
        drawers = sum(1 for _name, a in config.agent_names() if a.runtime == "optuna")
        self.knobs = list(setup.config.knobs)
        self.distributions = {k.name: distribution(k) for k in self.knobs}
        # its random start: the baseline (which seeds each study whose knobs it lies inside,
        # `baseline`), then as many random draws as the optuna agents drawing from it would
        # make alone, then TPE
        draws = (STARTUP - 1) * (max(1, drawers) if self.shared else 1)
        direction = (
            StudyDirection.MINIMIZE
            if setup.config.lab.goal is Goal.minimize
            else StudyDirection.MAXIMIZE
        )
        with warnings.catch_warnings():
            # constant_liar / multivariate are flagged experimental; we rely on them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                n_startup_trials=1 + draws,
                multivariate=True,
                constant_liar=True,
                seed=seed,
            )
        store = open_store(setup.store_url)  # the study lives in the lab's database
        try:
            storage = store.optuna_storage()
        finally:
            store.close()  # (the storage outlives it: one per database and process)
        self.agent = setup.agent
        self._store_url, self._run_id = setup.store_url, setup.run_id
        self._sigma: float | None = None
        """σ of the run's noise floor (`_noisy`), read at the first move."""
        name = study_name(setup.run_id, None if self.shared else setup.agent)
        self._new = name not in {s.study_name for s in storage.get_all_studies()}
        """Whether this study began now: a resumed run's then hears of what finished."""
        self.study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=direction,
            sampler=sampler,
            load_if_exists=True,
        )
        self._asked: dict[int, optuna.trial.Trial] = {}
        self._explore: int | None = None
        """The lab's trial the agent moved to, while its proposals explore near it."""
        self._patience = setup.config.lab.patience
        self._misses = 0
        """Explore steps in a row that found nothing since the move (or the last keep)."""
        self._random = random.Random(seed)
        self._withdrawn: list[tuple[int, dict[str, Any], int | None]] = []
        """Draws made ahead and not tried (optuna trial, params, re-queued from): asked
        again before the study is."""

    def propose(self, worktree: Path, trial: Trial) -> Proposal:
        before = knob_files.current_values(worktree, self.knobs)
        if self._explore is not None:
            origin = self._explore
            with _ask_lock:  # (a point another agent steps to now is in the study at once)
                params = explore(before, self.knobs, self._random, self._measured())
                number = self._running(params, trial) if params is not None else None
            if params is not None:
                return self._proposal(
                    before, params,
                    {"params": params, "optuna_trial": number, "explore_of": origin},
                    f" (exploring near trial {origin}, the lab's best)",
                )  # fmt: skip
            self._explore = None  # outside the knobs' space, or no new neighbour: TPE
        if self._withdrawn:
            number, params, again = self._withdrawn.pop(0)
            return self._proposal(
                before, params, {"params": params, "optuna_trial": number}, requeued_from=again
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with _ask_lock:
                asked = self.study.ask(self.distributions)
        params = dict(asked.params)
        requeued = asked.user_attrs.get(_REQUEUE_ATTR)
        return self._proposal(
            before,
            params,
            {"params": params, "optuna_trial": asked.number},
            requeued_from=int(requeued) if requeued is not None else None,
        )

    def _proposal(
        self,
        before: dict[str, Any],
        params: dict[str, Any],
        data: dict[str, Any],
        note: str = "",
        requeued_from: int | None = None,
    ) -> Proposal:
        changes = [
            f"{name} {knob_files.literal(before[name])} -> {knob_files.literal(value)}"
            for name, value in params.items()
            if before.get(name) != value
        ]
        description = (", ".join(changes) if changes else "re-measure the current knobs") + note
        knobs = self.knobs

        def apply(root: Path) -> None:
            knob_files.apply(root, knobs, params)

        return Proposal(description, data, apply, requeued_from=requeued_from)

    def observe(self, trial: Trial) -> None:
        number = trial.proposal.get("optuna_trial")
        if number is None:  # (an explore step recorded before they were study trials)
            if trial.proposal.get("explore_of") is not None:
                self._heard(trial)
        # skip_if_finished: resume() may tell again what was already heard; once counts
        elif trial.status in (TrialStatus.kept, TrialStatus.discarded) and trial.metric is not None:
            self.study.tell(int(number), trial.metric, skip_if_finished=True)
        else:
            self.study.tell(int(number), state=TrialState.FAIL, skip_if_finished=True)
        if trial.proposal.get("explore_of") is not None:
            self._explored(trial)

    def resume(self, finished: Sequence[Trial], requeue: Sequence[Trial]) -> None:
        """Catch up after a stop: tell what finished unheard, fail orphans, re-queue.

        A kill between the store recording a trial and Optuna hearing of it
        leaves the Optuna trial RUNNING; the store is the truth, so it is told now.
        """
        if not self.shared:
            finished = [t for t in finished if t.agent == self.agent]
        by_number = {t.proposal.get("optuna_trial"): t for t in finished}
        storage = self.study._storage
        heard = {s.user_attrs.get(_TRIAL_ATTR) for s in self.study.get_trials(deepcopy=False)}
        for done in finished:
            told = self._new or done.proposal.get("explore_of") is not None
            if told and done.number not in heard:
                self._heard(done)  # (a new study: every trial, asked elsewhere)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in by_number:
                self.observe(by_number[t.number])
            else:
                # asked, but the kill came before our trial was even recorded
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        waiting = {
            t.user_attrs.get(_REQUEUE_ATTR)
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        }
        for trial in requeue:
            params = trial.proposal.get("params")
            if params is None or trial.number in waiting:
                continue
            self.study.enqueue_trial(
                dict(params), user_attrs={_REQUEUE_ATTR: trial.number}, skip_if_exists=False
            )

    def ahead(self) -> bool:
        """A TPE draw may be made while the agent's trial runs (constant liar counts that
        trial); an explore step, from where the agent will stand, may not."""
        return self._explore is None

    def withdraw(self, proposal: Proposal) -> None:
        """A draw made ahead that was not tried (its agent moved on): it is proposed again
        next, from wherever the agent then stands (an explore step goes first)."""
        number = proposal.data.get("optuna_trial")
        params = proposal.data.get("params")
        if number is not None and isinstance(params, dict):
            self._withdrawn.append((int(number), dict(params), proposal.requeued_from))

    def close(self) -> None:
        """The study hears that the draws still withdrawn will not be tried."""
        while self._withdrawn:
            number, _params, _again = self._withdrawn.pop()
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def adopted(self, worktree: Path, best: Trial) -> None:
        """On a noisy metric, the next proposals explore around the adopted commit's knobs
        (a TPE draw would land anywhere, wherever the agent stands)."""
        if self._noisy():
            self._explore, self._misses = best.number, 0

    def _noisy(self) -> bool:
        """Whether the run measured its metric to vary between runs of the same code (read
        once: a move comes after the baseline, whose runs are where the noise is measured)."""
        if self._sigma is None:
            store = open_store(self._store_url)
            try:
                run = store.get_run(self._run_id)
            finally:
                store.close()
            floor = (run.noise_floor if run is not None else None) or {}
            self._sigma = float(floor.get("sigma") or 0.0)
        return self._sigma > 0

    def _explored(self, trial: Trial) -> None:
        """A keep moves the search on from the kept knobs (the worktree is there now);
        `patience` misses in a row end it."""
        if self._explore is None:
            return
        if trial.status is TrialStatus.kept:
            self._misses = 0
            return
        self._misses += 1
        if self._misses >= self._patience:
            self._explore = None

    def _measured(self) -> set[tuple[Any, ...]]:
        """The points (`point`) the study has measured, or is measuring."""
        done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
        return {
            point(t.params, self.knobs)
            for t in self.study.get_trials(deepcopy=False, states=done)
            if set(t.params) == set(self.distributions)
        }

    def _running(self, params: dict[str, Any], trial: Trial) -> int:
        """An explore step as a study trial being measured, from now until its agent tells
        how it went (so the other agents' steps, and TPE's constant liar, know of it).
        Its number in the study."""
        frozen = optuna.trial.create_trial(
            params=params,
            distributions=self.distributions,
            user_attrs={_TRIAL_ATTR: trial.number},
            state=TrialState.RUNNING,
        )
        storage = self.study._storage
        trial_id = storage.create_new_trial(self.study._study_id, template_trial=frozen)
        return int(storage.get_trial_number_from_id(trial_id))

    def _heard(self, trial: Trial) -> None:
        """Tell the study a trial it did not ask for (an explore step, one asked in another
        study), as a trial of its own."""
        params = trial.proposal.get("params")
        if not isinstance(params, dict) or set(params) != set(self.distributions):
            return
        measured = trial.status in (TrialStatus.kept, TrialStatus.discarded)
        if measured and trial.metric is not None and math.isfinite(trial.metric):
            done: dict[str, Any] = {"value": trial.metric}
        else:
            done = {"state": TrialState.FAIL}
        try:
            frozen = optuna.trial.create_trial(
                params=params,
                distributions=self.distributions,
                user_attrs={_TRIAL_ATTR: trial.number},
                **done,
            )
        except ValueError:
            return  # the knobs changed since (a resumed run with new ranges)
        self.study.add_trial(frozen)

    def baseline(self, trial: Trial, worktree: Path) -> None:
        """Seed the study with the committed knob values and their measured metric."""
        if trial.metric is None or math.isnan(trial.metric) or self.study.trials:
            return
        values = knob_files.current_values(worktree, self.knobs)
        params = {}
        for name, dist in self.distributions.items():
            value = values.get(name)
            try:
                if dist._contains(dist.to_internal_repr(value)):
                    params[name] = value
                    continue
            except (ValueError, TypeError):
                pass
            return  # the committed value lies outside the search space; let TPE start cold
        self.study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=self.distributions,
                value=trial.metric,
                user_attrs={"overnight_baseline": True},
            )
        )


def point(params: dict[str, Any], knobs: Sequence[KnobConfig]) -> tuple[Any, ...]:
    """`params` as a point of the knobs' space: numbers to 5 significant digits (far finer
    than a step), so that x1.25 then x0.8 is the point it came from."""
    return tuple(
        float(f"{value:.5g}") if isinstance(value, float) else value
        for value in (params.get(k.name) for k in knobs)
    )


def explore(
    values: dict[str, Any],
    knobs: Sequence[KnobConfig],
    rng: random.Random,
    measured: Collection[tuple[Any, ...]] = (),
) -> dict[str, Any] | None:
    """The knobs at `values`, nudged (population-based training's explore step): each
    range knob a step up or down, each choice knob switched now and then, at least one
    knob changed, never to a point in `measured` (`point`s). None when a value lies
    outside its knob's space, or no unmeasured neighbour came of EXPLORE_DRAWS draws (TPE
    takes over)."""
    for _ in range(EXPLORE_DRAWS):
        params = _neighbour(values, knobs, rng)
        if params is None:
            return None
        if point(params, knobs) not in measured:
            return params
    return None


def _neighbour(
    values: dict[str, Any], knobs: Sequence[KnobConfig], rng: random.Random
) -> dict[str, Any] | None:
    params: dict[str, Any] = {}
    for knob in knobs:
        value = values.get(knob.name)
        dist = distribution(knob)
        try:
            if value is None or not dist._contains(dist.to_internal_repr(value)):
                return None
        except (ValueError, TypeError):
            return None
        params[knob.name] = _nudge(knob, value, rng, SWITCH_CHOICE)
    if params == {k.name: values[k.name] for k in knobs}:
        knob = rng.choice(list(knobs))
        params[knob.name] = _nudge(knob, values[knob.name], rng, 1.0)
    return params


def _nudge(knob: KnobConfig, value: Any, rng: random.Random, switch: float) -> Any:
    if knob.choices is not None:
        others = [c for c in knob.choices if c != value]
        return rng.choice(others) if others and rng.random() < switch else value
    assert knob.low is not None and knob.high is not None
    low, high = knob.low, knob.high
    up = rng.random() < 0.5
    for direction in (up, not up):  # the other way when a bound leaves no room
        if knob.log:
            moved = value * (1.25 if direction else 0.8)
        else:
            moved = value + (1 if direction else -1) * STEP * (high - low)
        if knob.int_:
            moved = round(moved)
            if moved == value:
                moved = value + (1 if direction else -1)
        moved = min(max(moved, low), high)
        if moved != value:
            return int(moved) if knob.int_ else float(moved)
    return value


def register_runtimes(register: Register) -> None:
    register(ProposerRuntime("optuna", OptunaProposer, knobs=True))
