"""The Optuna studies in the store's database, read from a copy this process keeps.

Optuna's RDB storage reads a study's unfinished trials back from the database at
every read, and a TPE ask reads the study several times (and a constant-liar
sampler wants the running trials each time): on SQLite that was most of an
optuna agent's time between two experiments. `StudyCopy` is a storage that
writes to the database first, exactly as before (so a kill -9 loses nothing the
database had: resume works from it as ever), and then applies the same change to
a copy of the study in memory, which every read is answered from.

The copy is taken when a study is opened (`optuna.create_study` or `load_study`
on this storage: each proposer's start), so it holds what any earlier process
wrote; after that this process is assumed the study's only writer, as the lab's
lock makes it. Should a trial created meanwhile by another writer show up (its
number is not the next one here), the copy is read again. Knows nothing about
labs or trials of the ledger.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from optuna.study._frozen import FrozenStudy


class _Study:
    """One study's copy: its trials by number, its directions and name."""

    def __init__(self, name: str, directions: list[StudyDirection]) -> None:
        self.name = name
        self.directions = directions
        self.trials: list[FrozenTrial] = []


class StudyCopy(BaseStorage):
    """Optuna's storage over `db`: writes go to the database, then to the copy in memory;
    reads come from the copy. Ids are the database's. Thread-safe."""

    def __init__(self, db: RDBStorage) -> None:
        self.db = db
        self._studies: dict[int, _Study] = {}
        self._where: dict[int, tuple[int, int]] = {}
        """Trial id -> (study id, number)."""
        self._lock = threading.RLock()

    # -- the copy ------------------------------------------------------------------

    def _load(self, study_id: int) -> _Study:
        """Read the study afresh from the database."""
        with self._lock:
            study = _Study(
                self.db.get_study_name_from_id(study_id), self.db.get_study_directions(study_id)
            )
            study.trials = self.db.get_all_trials(study_id, deepcopy=False)
            for old in self._studies.get(study_id, _Study("", [])).trials:
                self._where.pop(old._trial_id, None)
            for trial in study.trials:
                self._where[trial._trial_id] = (study_id, trial.number)
            self._studies[study_id] = study
            return study

    def _study(self, study_id: int) -> _Study:
        with self._lock:
            return self._studies.get(study_id) or self._load(study_id)

    def _replace(self, trial_id: int, **changes: Any) -> None:
        """The copy's trial `trial_id` with `changes`, as a new object (those handed out
        stay as they were)."""
        study_id, number = self._where[trial_id]
        trials = self._studies[study_id].trials
        trial = copy.copy(trials[number])
        for name, value in changes.items():
            setattr(trial, name, value)
        trials[number] = trial

    # -- studies: the database's -----------------------------------------------------

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        study_id = self.db.create_new_study(directions, study_name)
        self._load(study_id)
        return study_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self.db.delete_study(study_id)
            for trial in self._studies.pop(study_id, _Study("", [])).trials:
                self._where.pop(trial._trial_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.db.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.db.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        """The study's id; opening a study (a `Study` made on this storage) takes its copy."""
        study_id = self.db.get_study_id_from_name(study_name)
        self._load(study_id)
        return study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._study(study_id).name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return list(self._study(study_id).directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.db.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.db.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.db.get_all_studies()

    # -- trials: written to the database, then to the copy ------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._lock:
            study = self._study(study_id)
            # (the private call _CachedStorage makes: the new trial, number and all, from
            # the transaction that wrote it, without reading it back)
            trial = self.db._create_new_trial(study_id, template_trial)
            if trial.number != len(study.trials):  # another writer was here: read it all
                self._load(study_id)
                return trial._trial_id
            study.trials.append(trial)
            self._where[trial._trial_id] = (study_id, trial.number)
            return trial._trial_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        with self._lock:
            study_id, _number = self._where.get(trial_id, (None, None))
            if study_id is None:
                self.db.set_trial_param(trial_id, param_name, param_value_internal, distribution)
                return
            before = next(
                (
                    t.distributions[param_name]
                    for t in self._studies[study_id].trials
                    if param_name in t.distributions
                ),
                None,
            )
            # (given the distribution the study has, the database need not look it up)
            self.db._set_trial_param(
                trial_id, param_name, param_value_internal, distribution, before
            )
            trial = self.get_trial(trial_id)
            value = distribution.to_external_repr(param_value_internal)
            self._replace(
                trial_id,
                params={**trial.params, param_name: value},
                distributions={**trial.distributions, param_name: distribution},
            )

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._lock:
            changed = self.db.set_trial_state_values(trial_id, state, values)
            if changed and trial_id in self._where:
                now = datetime.now()  # (the database's times differ by a moment)
                trial = self.get_trial(trial_id)
                self._replace(
                    trial_id,
                    state=state,
                    values=list(values) if values is not None else trial.values,
                    datetime_start=now if state is TrialState.RUNNING else trial.datetime_start,
                    datetime_complete=now if state.is_finished() else trial.datetime_complete,
                )
            return changed

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        with self._lock:
            self.db.set_trial_intermediate_value(trial_id, step, intermediate_value)
            trial = self.get_trial(trial_id)
            values = {**trial.intermediate_values, step: intermediate_value}
            self._replace(trial_id, intermediate_values=values)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            self.db.set_trial_user_attr(trial_id, key, value)
            attrs = {**self.get_trial(trial_id).user_attrs, key: value}
            self._replace(trial_id, user_attrs=attrs)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            self.db.set_trial_system_attr(trial_id, key, value)
            attrs = {**self.get_trial(trial_id).system_attrs, key: value}
            self._replace(trial_id, system_attrs=attrs)

    # -- trials: read from the copy -------------------------------------------------

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            trials = self._study(study_id).trials
            if 0 <= trial_number < len(trials):
                return trials[trial_number]._trial_id
        return self.db.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            where = self._where.get(trial_id)
            if where is not None:
                study_id, number = where
                return self._studies[study_id].trials[number]
        return self.db.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        with self._lock:
            trials = list(self._study(study_id).trials)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials
