"""The Store contract (overnight.testing.store_contract) run against SQLite and PostgreSQL
alike, and what only the SQL store does: migrations, and ledgers saved by released schemas."""

from __future__ import annotations

import sqlite3
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
