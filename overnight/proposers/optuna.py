"""The `optuna` proposer: sets `[[knobs]]` from an Optuna study kept in the lab's database.

The study is named after the run and lives next to the ledger, so a resumed run
continues it and several agents share it (constant-liar TPE keeps parallel
agents from proposing the same point). Knows nothing about git or the runner.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
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

from overnight.lab.trial import TrialStatus
from overnight.org.config import Goal, KnobConfig
from overnight.proposers import knobs as knob_files
from overnight.proposers.base import Proposal, ProposerSetup, register
from overnight.store.base import Trial
from overnight.store.sql import sqlalchemy_url

optuna.logging.set_verbosity(optuna.logging.WARNING)

_REQUEUE_ATTR = "overnight_requeued_from"
_storages: dict[str, optuna.storages.RDBStorage] = {}
_storages_lock = threading.Lock()
# Optuna pops a WAITING (re-queued) trial with a read-then-write that two threads
# on SQLite can both win; one ask at a time per process keeps every point unique.
_ask_lock = threading.Lock()


def _storage(url: str) -> optuna.storages.RDBStorage:
    """One RDBStorage per database per process (creating one runs Optuna's migrations)."""
    with _storages_lock:
        if url not in _storages:
            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite"):
                kwargs = {"connect_args": {"timeout": 60}}
            _storages[url] = optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=kwargs)
        return _storages[url]


def distribution(knob: KnobConfig) -> BaseDistribution:
    if knob.choices is not None:
        return CategoricalDistribution(knob.choices)
    assert knob.low is not None and knob.high is not None
    if knob.int_:
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return FloatDistribution(knob.low, knob.high, log=knob.log)


def study_name(run_id: str) -> str:
    return f"overnight-{run_id}"


class OptunaProposer:
    def __init__(self, setup: ProposerSetup) -> None:
        self.knobs = list(setup.config.knobs)
        self.distributions = {k.name: distribution(k) for k in self.knobs}
        direction = (
            StudyDirection.MINIMIZE
            if setup.config.lab.goal is Goal.minimize
            else StudyDirection.MAXIMIZE
        )
        with warnings.catch_warnings():
            # constant_liar / multivariate are flagged experimental; we rely on them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                n_startup_trials=5, multivariate=True, constant_liar=True
            )
        self.study = optuna.create_study(
            study_name=study_name(setup.run_id),
            storage=_storage(setup.store_url),
            direction=direction,
            sampler=sampler,
            load_if_exists=True,
        )
        self._asked: dict[int, optuna.trial.Trial] = {}

    def propose(self, worktree: Path, trial: Trial) -> Proposal:
        before = knob_files.current_values(worktree, self.knobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with _ask_lock:
                asked = self.study.ask(self.distributions)
        params = dict(asked.params)
        changes = [
            f"{name} {knob_files.literal(before[name])} -> {knob_files.literal(value)}"
            for name, value in params.items()
            if before.get(name) != value
        ]
        description = ", ".join(changes) if changes else "re-measure the current knobs"
        requeued = asked.user_attrs.get(_REQUEUE_ATTR)
        knobs = self.knobs

        def apply(root: Path) -> None:
            knob_files.apply(root, knobs, params)

        return Proposal(
            description=description,
            data={"params": params, "optuna_trial": asked.number},
            apply=apply,
            requeued_from=int(requeued) if requeued is not None else None,
        )

    def observe(self, trial: Trial) -> None:
        number = trial.proposal.get("optuna_trial")
        if number is None:
            return
        # skip_if_finished: resume() may tell again what was already heard; once counts
        if trial.status in (TrialStatus.kept, TrialStatus.discarded) and trial.metric is not None:
            self.study.tell(int(number), trial.metric, skip_if_finished=True)
        else:
            self.study.tell(int(number), state=TrialState.FAIL, skip_if_finished=True)

    def resume(self, finished: Sequence[Trial], requeue: Sequence[Trial]) -> None:
        """Catch up after a stop: tell what finished unheard, fail orphans, re-queue.

        A kill between the store recording a trial and Optuna hearing of it
        leaves the Optuna trial RUNNING; the store is the truth, so it is told now.
        """
        by_number = {t.proposal.get("optuna_trial"): t for t in finished}
        storage = self.study._storage
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


register("optuna", OptunaProposer)
