"""The Store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from overnight.lab.trial import TrialStatus as S
from overnight.store import AgentRecord, SqlStore, TransitionError, open_store
from overnight.store.base import ATTEMPT_FIELDS
from overnight.store.migrations import MIGRATIONS


def _run(store: SqlStore, run_id: str = "r1") -> None:
    store.create_run(run_id, "lab", "base", {"judge.py": "abc"}, {"lab": {"metric": "score"}})
    store.put_agent(
        AgentRecord(run_id, "a1", "optuna", f"overnight/{run_id}/a1", "/tmp/wt", best_commit="base")
    )


def test_run_round_trip(store: SqlStore) -> None:
    _run(store)
    run = store.get_run("r1")
    assert run is not None
    assert run.protected == {"judge.py": "abc"}
    assert run.config == {"lab": {"metric": "score"}}
    assert store.latest_run("lab") == run
    assert store.latest_run("other") is None
    assert store.get_run("nope") is None


def test_trial_lifecycle_writes_events_and_moves_the_ratchet(store: SqlStore) -> None:
    _run(store)
    t = store.add_trial("r1", "a1", "base", "X 1 -> 2", {"params": {"X": 2}})
    assert (t.number, t.status, t.proposal) == (1, S.proposed, {"params": {"X": 2}})
    t = store.update_trial(t.id, S.applied, candidate_commit="c1", diff="+X = 2")
    t = store.update_trial(t.id, S.checked)
    t = store.update_trial(t.id, S.running, log_path="/tmp/log")
    t = store.update_trial(t.id, S.running, pid=4242)  # a field update, not a move
    t = store.update_trial(t.id, S.measured, metric=0.5, metrics=[0.5])
    t = store.update_trial(t.id, S.kept)
    assert t.status is S.kept and t.metrics == (0.5,) and t.pid == 4242
    agent = store.agents("r1")[0]
    assert (agent.best_commit, agent.best_metric, agent.best_trial) == ("c1", 0.5, 1)
    kinds = [e.kind for e in store.events("r1")]
    assert kinds == [
        "run.created",
        "trial.proposed",
        "trial.applied",
        "trial.checked",
        "trial.running",
        "trial.measured",
        "trial.kept",
    ]


def test_illegal_transitions_are_refused_and_change_nothing(store: SqlStore) -> None:
    _run(store)
    t = store.add_trial("r1", "a1", "base", "d", {})
    with pytest.raises(TransitionError):
        store.update_trial(t.id, S.kept)
    t2 = store.update_trial(t.id, S.crashed, reason="bad diff")
    with pytest.raises(TransitionError):
        store.update_trial(t2.id, S.applied)
    assert store.get_trial(t.id).status is S.crashed
    assert [e.kind for e in store.events("r1")][-1] == "trial.crashed"


def test_returned_records_are_snapshots(store: SqlStore) -> None:
    _run(store)
    t = store.add_trial("r1", "a1", "base", "d", {"k": [1, 2]})
    store.update_trial(t.id, S.crashed, reason="x")
    assert t.status is S.proposed  # the old record did not change
    with pytest.raises(AttributeError):
        t.status = S.kept  # type: ignore[misc]


def test_trial_numbers_are_unique_and_gapless_under_concurrency(store: SqlStore) -> None:
    _run(store)
    numbers: list[int] = []
    lock = threading.Lock()

    def add(n: int) -> None:
        for _ in range(n):
            t = store.add_trial("r1", "a1", "base", "d", {})
            with lock:
                numbers.append(t.number)

    threads = [threading.Thread(target=add, args=(15,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(numbers) == list(range(1, 61))
    assert [t.number for t in store.trials("r1")] == list(range(1, 61))


def test_filters_and_event_paging(store: SqlStore) -> None:
    _run(store)
    a = store.add_trial("r1", "a1", "base", "a", {})
    b = store.add_trial("r1", "a2", "base", "b", {})
    store.update_trial(a.id, S.crashed)
    assert [t.number for t in store.trials("r1", agent="a2")] == [b.number]
    assert [t.number for t in store.trials("r1", statuses=[S.crashed])] == [a.number]
    assert store.trials("r1", statuses=[]) == []
    first = store.events("r1", limit=2)
    rest = store.events("r1", after=first[-1].id)
    assert [e.id for e in first + rest] == sorted({e.id for e in first + rest})
    assert len(first + rest) == len(store.events("r1"))


def test_put_agent_never_resets_a_ratchet(store: SqlStore) -> None:
    _run(store)
    store.set_agent_best("r1", "a1", "c9", 0.1, 9)
    store.put_agent(AgentRecord("r1", "a1", "optuna", "b", "/tmp/wt", best_commit="base"))
    assert store.agents("r1")[0].best_commit == "c9"


def test_agent_state_is_recorded_with_an_event(store: SqlStore) -> None:
    _run(store)
    store.set_agent_state("r1", "a1", "working")
    assert store.agents("r1")[0].state == "working"
    last = store.events("r1")[-1]
    assert (last.kind, last.agent, last.payload) == ("agent.state", "a1", {"state": "working"})
    assert store.agents("r1")[0].state_since == last.at


def test_an_agents_session_survives_reopening(store_url: str) -> None:
    first = open_store(store_url)
    _run(first)
    assert first.agents("r1")[0].session is None
    first.set_agent_session("r1", "a1", "3f1c0a52-session")
    first.close()
    again = open_store(store_url)
    assert again.agents("r1")[0].session == "3f1c0a52-session"
    again.close()


def test_reopening_migrates_once_and_keeps_data(store_url: str) -> None:
    first = open_store(store_url)
    assert isinstance(first, SqlStore)
    _run(first)
    first.close()
    again = open_store(store_url)
    assert again.get_run("r1") is not None
    from sqlalchemy import text

    assert isinstance(again, SqlStore)
    with again.engine.begin() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM ov_migrations"))]
    assert names == [name for name, _ in MIGRATIONS]
    again.close()


def _attempt(agent: str, cost: float | None, started: float, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {field: 0 for field in ATTEMPT_FIELDS}
    row.update(
        request_id="r", attempt=1, agent=agent, trial=None, route="fast", upstream="a",
        model="m", credential="c", client_protocol="anthropic", upstream_protocol="openai",
        stream=True, outcome="ok", status=200, error=None, started_at=started,
        latency_s=0.2, ttft_s=0.05, input_tokens=100, output_tokens=20, cost_usd=cost,
        unpriced=cost is None,
    )  # fmt: skip
    row.update(extra)
    return row


def test_gateway_keys_attempts_and_spend(store: SqlStore) -> None:
    store.add_key_hash("lab", "a1", "h1")
    store.add_key_hash("lab", "a2", "h2")
    store.add_key_hash("other", "a1", "h3")
    assert store.key_hashes("lab") == {"h1": "a1", "h2": "a2"}
    store.record_attempts(
        "lab",
        None,
        [
            _attempt("a1", 0.5, 100.0, trial="7"),
            _attempt("a1", None, 200.0, outcome="failed_over", status=529),
            _attempt("a2", 0.25, 300.0),
        ],
    )
    assert store.spend("lab") == 0.75  # unpriced adds nothing, never pretends $0 is a price
    assert store.spend("lab", agent="a1") == 0.5
    assert store.spend("lab", since=250.0) == 0.25
    rows = store.attempts("lab", agent="a1")
    assert [r["outcome"] for r in rows] == ["ok", "failed_over"]
    assert rows[1]["unpriced"] is True and rows[1]["cost_usd"] is None
    assert rows[0]["stream"] is True and rows[0]["trial"] == "7"
    assert [r["agent"] for r in store.attempts("lab", trial="7")] == ["a1"]
    assert store.spend("other") == 0.0


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
    assert store.agents(run.id)[0].name == "t"
    assert store.add_trial(run.id, "t", "b" * 40, "next", {}).number == 3
    assert store.key_hashes("toy") == {"d" * 64: "t"}
    assert store.spend("toy", agent="t") == 0.25
    store.close()


def test_what_each_trial_cost(store: SqlStore) -> None:
    """Tagged calls count for their trial; an agent's untagged calls (an external agent
    thinking before `overnight try`) for its next trial; unpriced calls never read as $0."""
    from overnight.lab.ledger import TrialCost, trial_costs

    _run(store)
    t1 = store.add_trial("r1", "a1", "base", "tagged", {})
    t2 = store.add_trial("r1", "a2", "base", "thought up", {})
    later = t2.created_at + 100
    store.record_attempts(
        "lab",
        "r1",
        [
            _attempt("a1", 0.5, t1.created_at + 1, trial=str(t1.number)),
            _attempt("a1", None, t1.created_at + 2, trial=str(t1.number)),
            _attempt("a2", 0.25, t2.created_at - 5),  # before a2's trial: counts for it
            _attempt("a2", 0.125, later),  # toward a trial a2 has not started yet
        ],
    )
    store.record_attempts("lab", "other-run", [_attempt("a1", 9.0, t1.created_at, trial="1")])
    assert trial_costs(store, "r1") == {
        t1.number: TrialCost(tokens=240, cost_usd=0.5, unpriced=True),
        t2.number: TrialCost(tokens=120, cost_usd=0.25, unpriced=False),
    }
