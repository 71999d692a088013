"""The Store contract (overnight.testing.store_contract) run against SQLite and PostgreSQL
alike, and what only the SQL store does: migrations, and ledgers saved by released schemas."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from overnight.governance.audit import Auditor, load_key, verify
from overnight.records import TrialStatus as S
from overnight.store import SqlStore, Store, open_store
from overnight.store.migrations import MIGRATIONS
from overnight.testing.store_contract import StoreContract, attempt_row, start_run


def test_reopening_migrates_once_and_keeps_data(store_url: str) -> None:
    first = open_store(store_url)
    assert isinstance(first, SqlStore)
    start_run(first)
    first.close()
    again = open_store(store_url)
    assert again.get_run("r1") is not None
    from sqlalchemy import text

    assert isinstance(again, SqlStore)
    with again.engine.begin() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM ov_migrations"))]
    assert names == [name for name, _ in MIGRATIONS]
    again.close()


SAVED = sorted((Path(__file__).parent / "data").glob("store-*.sql"))


@pytest.mark.parametrize("dump", SAVED, ids=[p.stem for p in SAVED])
def test_databases_saved_by_released_schemas_upgrade_in_place(dump: Path, tmp_path: Path) -> None:
    """A user's ledger from every released schema opens, reads and writes after an upgrade."""
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(dump.read_text())
    conn.close()
    store = open_store(f"sqlite:///{db}")
    run = store.latest_run("toy")
    assert run is not None and run.protected == {"judge.py": "c" * 40}
    trials = store.trials(run.id)
    assert [(t.number, t.status) for t in trials] == [(1, S.kept), (2, S.crashed)]
    assert trials[0].metric == 2.5 and trials[1].reason == "bad"
    # what a later schema added reads as "not measured" in an older ledger
    assert run.noise_floor is None and (trials[0].holdout_metric, trials[0].flag) == (None, None)
    assert store.agents(run.id)[0].name == "t"
    assert (trials[0].recorded, trials[0].memory_gb, trials[0].peak_rss_mb) == ({}, None, None)
    assert store.add_trial(run.id, "t", "b" * 40, "next", {}).number == 3
    assert store.key_hashes("toy") == {"d" * 64: "t"}
    assert store.spend("toy", agent="t") == 0.25
    key = load_key(tmp_path / "keys" / "audit.key", create=True)
    kept = 0
    if dump.stem >= "store-0003":
        pending, denied = store.get_approval("k7q2mx"), store.get_approval("p3wz8d")
        assert pending is not None and pending.action["command"] == "git push --force"
        assert denied is not None and (denied.status, denied.note) == ("denied", "never")
        kept = len(store.audit_records("toy"))
        Auditor(store, "toy", key=key).checkpoint()  # signs the head as it stands
        assert kept == 13 and verify(store, "toy", key).ok  # every old hash still checks out
    Auditor(store, "toy", key=key).append("decision", "t", "shell", {"command": "ls"})
    verdict = verify(store, "toy", key)
    assert verdict.ok and verdict.records == kept + 1, verdict.summary()
    store.close()


def test_what_each_trial_cost(store: SqlStore) -> None:
    """Tagged calls count for their trial; an agent's untagged calls (an external agent
    thinking before `overnight try`) for its next trial; unpriced calls never read as $0."""
    from overnight.costs.trials import TrialCost, trial_costs

    start_run(store)
    t1 = store.add_trial("r1", "a1", "base", "tagged", {})
    t2 = store.add_trial("r1", "a2", "base", "thought up", {})
    later = t2.created_at + 100
    store.record_attempts(
        "lab",
        "r1",
        [
            attempt_row("a1", 0.5, t1.created_at + 1, trial=str(t1.number)),
            attempt_row("a1", None, t1.created_at + 2, trial=str(t1.number)),
            attempt_row("a2", 0.25, t2.created_at - 5),  # before a2's trial: counts for it
            attempt_row("a2", 0.125, later),  # toward a trial a2 has not started yet
        ],
    )
    store.record_attempts("lab", "other-run", [attempt_row("a1", 9.0, t1.created_at, trial="1")])
    assert trial_costs(store, "r1") == {
        t1.number: TrialCost(tokens=240, cost_usd=0.5, unpriced=True),
        t2.number: TrialCost(tokens=120, cost_usd=0.25, unpriced=False),
    }


class TestSqlStore(StoreContract):
    """The contract, on each backend of the `store_url` fixture (SQLite and PostgreSQL)."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> Callable[[], Store]:
        return lambda: open_store(store_url)


def test_an_optuna_study_read_from_its_copy_is_the_databases(store: SqlStore) -> None:
    """What optuna agents ask and tell through the store's storage (reads from a copy in this
    process) is what the database holds, as another process reads it; a study opened again
    takes what another writer added, and a trial created meanwhile numbers on from it."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    from overnight.store.engine import sqlalchemy_url

    space = {"x": FloatDistribution(-5, 5), "n": IntDistribution(1, 9)}

    def sampler() -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():  # (constant_liar is flagged experimental)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                n_startup_trials=3, multivariate=True, constant_liar=True, seed=1
            )

    ours = optuna.create_study(study_name="s", storage=store.optuna_storage(), sampler=sampler())
    running = [ours.ask(space) for _ in range(3)]  # asked side by side, as parallel agents do
    for _ in range(12):
        done = running.pop(0)
        ours.tell(done.number, (done.params["x"] - 1) ** 2 + done.params["n"])
        running.append(ours.ask(space))
    ours.tell(running.pop(0).number, state=TrialState.FAIL)
    ours.enqueue_trial({"x": 0.5, "n": 3}, user_attrs={"again": 7})
    popped = ours.ask(space)  # the re-queued point, WAITING until now
    assert popped.params == {"x": 0.5, "n": 3} and popped.user_attrs == {"again": 7}
    ours.add_trial(
        optuna.trial.create_trial(params={"x": 2.0, "n": 1}, distributions=space, value=3)
    )

    def seen(study: optuna.Study) -> list[tuple[object, ...]]:
        return [
            (t.number, t.state, t.params, t.values, t.user_attrs, t.datetime_complete is None)
            for t in study.get_trials(deepcopy=False)
        ]

    elsewhere = optuna.storages.RDBStorage(sqlalchemy_url(store.url))  # another process's
    theirs = optuna.load_study(study_name="s", storage=elsewhere)
    assert seen(theirs) == seen(ours) and len(seen(ours)) == 17
    # another writer: a new trial and a tell; the copy sees them once the study is opened again
    theirs.tell(running[0].number, 0.25)
    theirs.add_trial(
        optuna.trial.create_trial(params={"x": 1.0, "n": 2}, distributions=space, value=2)
    )
    assert ours.trials[running[0].number].state is TrialState.RUNNING  # (not opened again yet)
    again = optuna.load_study(study_name="s", storage=store.optuna_storage(), sampler=sampler())
    assert seen(again) == seen(theirs)
    # a trial asked on a study whose copy missed a trial created elsewhere numbers on after it
    theirs.add_trial(
        optuna.trial.create_trial(params={"x": 3.0, "n": 4}, distributions=space, value=5)
    )
    late = again.ask(space)
    assert late.number == 19
    assert seen(again) == seen(optuna.load_study(study_name="s", storage=elsewhere))
    for engine in (elsewhere.engine, store.optuna_storage().db.engine):
        engine.dispose()
