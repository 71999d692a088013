"""The Store contract as a test suite: what every Store must do, whatever keeps its bytes.

Owns the behaviour tests any implementation of `overnight.store.Store` has to pass (the
rules in `overnight/store/base.py`'s docstring), shipped with overnight the way optuna ships
its storage tests, so a new backend is held to the rules SQLite and PostgreSQL keep. Knows
the Store only through its abstract API: no SQL, no backend. Needs pytest, which runs it.

A backend's tests subclass `StoreContract` in a test module (named `Test...`, so pytest
collects it) and give it a `store_factory` fixture: a callable that opens the store under
test, the same empty database at every call::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path: Path) -> Callable[[], Store]:
            return lambda: MyStore(tmp_path / "db")
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import pytest

from overnight.records import (
    ATTEMPT_FIELDS,
    AgentRecord,
    Approval,
    AuditCheckpoint,
    AuditRecord,
    Event,
    ImportedTrial,
)
from overnight.records import TrialStatus as S
from overnight.store import Store, TransitionError


class StoreContract:
    """The contract's tests; a subclass provides the `store_factory` fixture."""

    @pytest.fixture
    def store(self, store_factory: Callable[[], Store]) -> Iterator[Store]:
        """A store on an empty database, closed after the test."""
        store = store_factory()
        yield store
        store.close()

    def test_run_round_trip(self, store: Store) -> None:
        start_run(store)
        run = store.get_run("r1")
        assert run is not None
        assert run.protected == {"judge.py": "abc"}
        assert run.config == {"lab": {"metric": "score"}}
        assert store.latest_run("lab") == run
        assert store.latest_run("other") is None
        assert store.get_run("nope") is None
        store.create_run("r2", "lab", "base", {}, {})
        store.create_run("r3", "another", "base", {}, {})
        assert store.labs() == ["another", "lab"]

    def test_trial_lifecycle_writes_events_and_moves_the_ratchet(self, store: Store) -> None:
        start_run(store)
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

    def test_a_runs_noise_floor_and_a_keeps_holdout_verdict_are_kept(self, store: Store) -> None:
        start_run(store)
        floor = {"runs": [1.0, 1.2, 1.1], "sigma": 0.1, "min_delta": 0.2}
        assert store.set_noise_floor("r1", floor).noise_floor == floor
        again = store.get_run("r1")
        assert again is not None and again.noise_floor == floor
        event = store.events("r1")[-1]
        assert (event.kind, event.payload) == ("lab.noise_floor", floor)
        flagged, rejected = (store.add_trial("r1", "a1", "base", d, {}) for d in ("f", "r"))
        for t, commit in ((flagged, "c1"), (rejected, "c2")):
            store.update_trial(t.id, S.applied, candidate_commit=commit)
            store.update_trial(t.id, S.checked)
            store.update_trial(t.id, S.running)
            store.update_trial(t.id, S.measured, metric=0.1, metrics=[0.1])
            store.update_trial(t.id, S.measured, holdout_metric=0.7, flag="holdout did not move")
        kept = store.update_trial(flagged.id, S.kept)
        assert (kept.holdout_metric, kept.flag) == (0.7, "holdout did not move")
        # the holdout may reject a measured trial outright
        assert (
            store.update_trial(rejected.id, S.rejected, reason="holdout: gaming").status
            is S.rejected
        )

    def test_a_trial_keeps_its_recorded_values_and_peak_memory(self, store: Store) -> None:
        start_run(store)
        t = store.add_trial("r1", "a1", "base", "d", {})
        assert (t.recorded, t.memory_gb, t.peak_rss_mb) == ({}, None, None)
        for status in (S.applied, S.checked, S.running):
            t = store.update_trial(t.id, status)
        t = store.update_trial(
            t.id, S.measured, metric=0.9, recorded={"peak_vram_mb": 45060.2, "mfu": 39.8},
            memory_gb=44.0, peak_rss_mb=812.5,
        )  # fmt: skip
        again = store.get_trial(t.id)
        assert again.recorded == {"peak_vram_mb": 45060.2, "mfu": 39.8}
        assert (again.memory_gb, again.peak_rss_mb) == (44.0, 812.5)

    def test_an_imported_history_is_appended_whole_and_finished(self, store: Store) -> None:
        start_run(store)
        store.add_trial("r1", "a1", "base", "before", {})
        rows = [
            ImportedTrial("imported", S.kept, "c0", "c0", "baseline", {"line": 2}, 0.99, 44.0),
            ImportedTrial(
                "imported", S.discarded, "c0", "c1", "wider", {"line": 3}, 1.01, 44.2, "+x"
            ),
            ImportedTrial("imported", S.crashed, "c0", "c2", "oom", {"line": 4}),
        ]
        made = store.import_trials("r1", rows)
        assert [(t.number, t.status, t.metric, t.memory_gb) for t in made] == [
            (2, S.kept, 0.99, 44.0),
            (3, S.discarded, 1.01, 44.2),
            (4, S.crashed, None, None),
        ]
        assert made[1].diff == "+x" and made[1].proposal == {"line": 3} and made[1].finished_at
        events = [e for e in store.events("r1") if e.trial in (2, 3, 4)]
        assert [(e.kind, e.agent, e.payload["description"]) for e in events] == [
            ("trial.kept", "imported", "baseline"),
            ("trial.discarded", "imported", "wider"),
            ("trial.crashed", "imported", "oom"),
        ]
        # the ratchet of the run's agents is not theirs to move
        assert store.agents("r1")[0].best_trial is None
        with pytest.raises(ValueError):  # all or nothing
            store.import_trials(
                "r1", [rows[0], ImportedTrial("imported", S.running, "c", "c", "", {})]
            )
        assert len(store.trials("r1")) == 4

    def test_illegal_transitions_are_refused_and_change_nothing(self, store: Store) -> None:
        start_run(store)
        t = store.add_trial("r1", "a1", "base", "d", {})
        with pytest.raises(TransitionError):
            store.update_trial(t.id, S.kept)
        t2 = store.update_trial(t.id, S.crashed, reason="bad diff")
        with pytest.raises(TransitionError):
            store.update_trial(t2.id, S.applied)
        assert store.get_trial(t.id).status is S.crashed
        assert [e.kind for e in store.events("r1")][-1] == "trial.crashed"

    def test_returned_records_are_snapshots(self, store: Store) -> None:
        start_run(store)
        t = store.add_trial("r1", "a1", "base", "d", {"k": [1, 2]})
        store.update_trial(t.id, S.crashed, reason="x")
        assert t.status is S.proposed  # the old record did not change
        with pytest.raises(AttributeError):
            t.status = S.kept  # type: ignore[misc]

    def test_trial_numbers_are_unique_and_gapless_under_concurrency(self, store: Store) -> None:
        start_run(store)
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

    def test_filters_and_event_paging(self, store: Store) -> None:
        start_run(store)
        a = store.add_trial("r1", "a1", "base", "a", {})
        b = store.add_trial("r1", "a2", "base", "b", {})
        store.update_trial(a.id, S.crashed)
        assert [t.number for t in store.trials("r1", agent="a2")] == [b.number]
        assert [t.number for t in store.trials("r1", statuses=[S.crashed])] == [a.number]
        assert store.trials("r1", statuses=[]) == []
        c = store.add_trial("r1", "a1", "base", "c", {})
        assert [t.number for t in store.trials("r1", last=2)] == [b.number, c.number]
        assert [t.number for t in store.trials("r1", agent="a1", last=5)] == [a.number, c.number]
        first = store.events("r1", limit=2)
        rest = store.events("r1", after=first[-1].id)
        assert [e.id for e in first + rest] == sorted({e.id for e in first + rest})
        assert len(first + rest) == len(store.events("r1"))

    def test_the_last_event_of_some_kinds(self, store: Store) -> None:
        start_run(store)
        first = store.append_event("r1", "agent.adopted", {"n": 1}, agent="a1")
        store.append_event("r1", "agent.adopted", {"n": 2}, agent="a2")
        store.append_event("r1", "run.stopped", {"rule": "target"})
        store.append_event("r1", "trial.kept", {}, agent="a1")
        assert _payload(store.last_event("r1", ["run.stopped", "run.resumed"])) == {
            "rule": "target"
        }
        assert _payload(store.last_event("r1", ["agent.adopted"])) == {"n": 2}
        assert _payload(store.last_event("r1", ["agent.adopted"], agent="a1")) == {"n": 1}
        assert store.last_event("r1", ["agent.adopted"], agent="a1", after=first.id) is None
        assert store.last_event("r1", []) is None
        assert store.last_event("r2", ["run.stopped"]) is None

    def test_a_ratchet_moved_outside_a_keep_is_recorded_with_its_reason(self, store: Store) -> None:
        start_run(store)
        event = store.set_agent_best("r1", "a1", "c7", 0.2, 7, event=("agent.adopted", {"n": 7}))
        assert event is not None and (event.kind, event.agent, event.trial) == (
            "agent.adopted",
            "a1",
            7,
        )
        assert store.events("r1")[-1] == event
        agent = store.agents("r1")[0]
        assert (agent.best_commit, agent.best_metric, agent.best_trial) == ("c7", 0.2, 7)
        assert store.set_agent_best("r1", "a1", "c8", 0.1, 8) is None

    def test_put_agent_never_resets_a_ratchet(self, store: Store) -> None:
        start_run(store)
        store.set_agent_best("r1", "a1", "c9", 0.1, 9)
        store.put_agent(AgentRecord("r1", "a1", "optuna", "b", "/tmp/wt", best_commit="base"))
        assert store.agents("r1")[0].best_commit == "c9"

    def test_agent_state_is_recorded_with_an_event(self, store: Store) -> None:
        start_run(store)
        store.set_agent_state("r1", "a1", "working")
        assert store.agents("r1")[0].state == "working"
        last = store.events("r1")[-1]
        assert (last.kind, last.agent, last.payload) == ("agent.state", "a1", {"state": "working"})
        assert store.agents("r1")[0].state_since == last.at

    def test_an_agents_session_survives_reopening(self, store_factory: Callable[[], Store]) -> None:
        first = store_factory()
        start_run(first)
        assert first.agents("r1")[0].session is None
        first.set_agent_session("r1", "a1", "3f1c0a52-session")
        first.close()
        again = store_factory()
        assert again.agents("r1")[0].session == "3f1c0a52-session"
        again.close()

    def test_cost_groups_sum_attempts_per_hour_and_fold_in_only_what_is_new(
        self, store: Store
    ) -> None:
        hour = 3600 * 500_000
        store.record_attempts("lab", "r1", [
            attempt_row("a1", 0.5, hour + 10.0, cache_read_tokens=300),
            attempt_row("a1", None, hour + 20.0, attempt=2, outcome="failed_over"),
            attempt_row("a1", 0.25, hour + 3599.9),
            attempt_row("a1", 1.0, hour + 3600.0),  # the next hour
            attempt_row("a2", 2.0, hour + 30.0, route="slow"),
        ])  # fmt: skip
        store.record_attempts("other", "r9", [attempt_row("a1", 9.0, hour)])
        groups = store.cost_groups("lab", "r1")
        first = next(g for g in groups if g.agent == "a1" and g.hour == hour // 3600)
        assert (first.attempts, first.requests, first.unpriced) == (3, 2, 1)
        assert first.cost_usd == 0.75 and first.input_tokens == 300
        assert first.cache_read_tokens == 300 and first.output_tokens == 60
        assert [(g.agent, g.route, g.hour - hour // 3600, g.cost_usd) for g in groups] == [
            ("a1", "fast", 0, 0.75), ("a2", "slow", 0, 2.0), ("a1", "fast", 1, 1.0),
        ]  # fmt: skip
        # read again: nothing is counted twice; new attempts are added to their group
        store.record_attempts("lab", "r1", [attempt_row("a2", 0.5, hour + 40.0, route="slow")])
        again = store.cost_groups("lab", "r1")
        assert [g.cost_usd for g in again] == [0.75, 2.5, 1.0]
        assert [g.attempts for g in again] == [3, 2, 1]
        assert sum(g.cost_usd for g in store.cost_groups("lab")) == 4.25
        assert [g.cost_usd for g in store.cost_groups("other")] == [9.0]

    def test_gateway_keys_attempts_and_spend(self, store: Store) -> None:
        store.add_key_hash("lab", "a1", "h1")
        store.add_key_hash("lab", "a2", "h2")
        store.add_key_hash("other", "a1", "h3")
        assert store.key_hashes("lab") == {"h1": "a1", "h2": "a2"}
        store.record_attempts(
            "lab",
            None,
            [
                attempt_row("a1", 0.5, 100.0, trial="7"),
                attempt_row("a1", None, 200.0, outcome="failed_over", status=529),
                attempt_row("a2", 0.25, 300.0),
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

    def test_audit_appends_from_many_threads_form_one_chain(self, store: Store) -> None:
        def append() -> None:
            for _ in range(10):
                store.append_audit("lab", _links("lab", 3))

        threads = [threading.Thread(target=append) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        store.append_audit("other", _links("other", 2))
        records = store.audit_records("lab", limit=1000)
        assert [r.seq for r in records] == list(range(1, 121))
        assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(records))
        assert store.audit_head("lab") == records[-1]
        assert [r.seq for r in store.audit_records("lab", after=118)] == [119, 120]
        assert [r.seq for r in store.audit_records("other")] == [1, 2]
        assert store.audit_head("none") is None

    def test_a_failing_build_writes_nothing(self, store: Store) -> None:
        def boom(seq: int, head: str) -> list[AuditRecord]:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            store.append_audit("lab", boom, cursors={"events": (0, 5)})
        assert store.audit_records("lab") == [] and store.audit_cursors("lab") == {}
        with pytest.raises(ValueError, match="expected 1"):  # a record numbered out of turn
            store.append_audit("lab", lambda seq, head: _links("lab", 2)(seq + 1, head))
        assert store.audit_records("lab") == []

    def test_audit_cursors_move_with_their_records_or_not_at_all(self, store: Store) -> None:
        assert store.append_audit("lab", _links("lab", 2), cursors={"events": (0, 7)})
        assert store.audit_cursors("lab") == {"events": 7}
        # a second follower that read from the old position lost the race: nothing is written
        assert store.append_audit("lab", _links("lab", 2), cursors={"events": (0, 7)}) is None
        assert len(store.audit_records("lab")) == 2
        done = store.append_audit(
            "lab", _links("lab", 0), cursors={"events": (7, 9), "attempts": (0, 3)}
        )
        assert done == []  # positions may move past events that make no record
        assert store.audit_cursors("lab") == {"events": 9, "attempts": 3}
        assert store.audit_cursors("other") == {}

    def test_audit_checkpoints_round_trip(self, store: Store) -> None:
        cp = AuditCheckpoint("lab", 7, "h" * 64, 12.5, "k1", "m" * 64)
        store.add_audit_checkpoint(cp)
        store.add_audit_checkpoint(AuditCheckpoint("lab", 7, "x" * 64, 13.0, "k1", "n" * 64))
        store.add_audit_checkpoint(AuditCheckpoint("lab", 3, "y" * 64, 11.0, "k1", "o" * 64))
        assert [c.seq for c in store.audit_checkpoints("lab")] == [3, 7]
        assert store.audit_checkpoints("lab")[1] == cp  # the first one at a seq stays
        assert store.audit_checkpoints("other") == []

    def test_a_follower_that_remembers_the_last_id_misses_nothing(self, store: Store) -> None:
        """Ids commit in id order, so reading `after=last seen` under concurrent writers
        never skips a late-committing event or attempt."""
        start_run(store)
        stop = threading.Event()

        def write(agent: str) -> None:
            while not stop.is_set():
                store.append_event("r1", "agent.state", {"n": 1}, agent=agent)
                store.record_attempts("lab", "r1", [attempt_row(agent, 0.1, time.time())])

        writers = [threading.Thread(target=write, args=(f"a{i}",)) for i in range(3)]
        for th in writers:
            th.start()
        seen_events: list[int] = []
        seen_attempts: list[int] = []
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                after = seen_events[-1] if seen_events else 0
                seen_events += [e.id for e in store.lab_events("lab", after=after, limit=50)]
                after = seen_attempts[-1] if seen_attempts else 0
                seen_attempts += [
                    int(a["id"]) for a in store.attempts("lab", after=after, limit=50)
                ]
        finally:
            stop.set()
            for th in writers:
                th.join()
        after = seen_events[-1]
        seen_events += [e.id for e in store.lab_events("lab", after=after, limit=100_000)]
        seen_attempts += [int(a["id"]) for a in store.attempts("lab", after=seen_attempts[-1])]
        assert seen_events == [e.id for e in store.events("r1", limit=100_000)]
        assert seen_attempts == [int(a["id"]) for a in store.attempts("lab")]
        assert len(seen_attempts) > 10
        assert store.lab_events("other") == []

    def test_an_approval_is_answered_once_with_an_event(self, store: Store) -> None:
        start_run(store)
        assert store.add_approval(_approval("k7q2mx"))
        assert not store.add_approval(_approval("k7q2mx"))  # the id is taken
        got = store.get_approval("k7q2mx")
        assert got is not None and got.status == "pending" and got.action["command"] == "git push"
        results: list[Approval | None] = []

        def answer(status: Literal["approved", "denied"]) -> None:
            results.append(
                store.answer_approval("k7q2mx", status, by=status, note="n", at=time.time())
            )

        threads = [threading.Thread(target=answer, args=(s,)) for s in ("approved", "denied") * 3]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        final = store.get_approval("k7q2mx")
        assert final == winners[0] and final.answered_by == final.status and final.note == "n"
        kinds = [
            (e.kind, e.payload.get("id"))
            for e in store.events("r1")
            if e.kind.startswith("approval")
        ]
        assert kinds == [("approval.requested", "k7q2mx"), (f"approval.{final.status}", "k7q2mx")]

    def test_lapsed_approvals_expire_apart_from_denied(self, store: Store) -> None:
        start_run(store)
        store.add_approval(_approval("aaaaaa", expires_in=-1))
        store.add_approval(_approval("bbbbbb", expires_in=3600))
        store.add_approval(_approval("cccccc", expires_in=-1, lab="other"))
        lapsed = store.get_approval("aaaaaa")
        assert lapsed is not None and lapsed.status == "pending"
        # a lapsed approval can no longer be answered, even before a sweep
        assert (
            store.answer_approval("aaaaaa", "approved", by="u", note=None, at=time.time()) is None
        )
        expired = store.expire_approvals("lab", time.time())
        assert [(a.id, a.status) for a in expired] == [("aaaaaa", "expired")]
        assert expired[0].answered_at == expired[0].expires_at and expired[0].answered_by is None
        assert store.expire_approvals("lab", time.time()) == []  # each expires once
        assert [a.id for a in store.approvals("lab", statuses=["pending"])] == ["bbbbbb"]
        assert [a.id for a in store.approvals("lab")] == ["aaaaaa", "bbbbbb"]
        assert store.approvals("lab", statuses=[]) == []
        assert store.events("r1")[-1].kind == "approval.expired"


# -- what the tests write -----------------------------------------------------------------------


def attempt_row(
    agent: str, cost: float | None, started: float, **extra: object
) -> dict[str, object]:
    """One gateway attempt as `Store.record_attempts` takes it: a priced (or, with `cost`
    None, unpriced) answer to `agent`, started at `started`, with `extra` fields changed."""
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


def start_run(store: Store, run_id: str = "r1") -> None:
    """Run `run_id` of the lab `lab`, with one optuna agent `a1` at the run's start."""
    store.create_run(run_id, "lab", "base", {"judge.py": "abc"}, {"lab": {"metric": "score"}})
    store.put_agent(
        AgentRecord(run_id, "a1", "optuna", f"overnight/{run_id}/a1", "/tmp/wt", best_commit="base")
    )


def _payload(event: Event | None) -> Mapping[str, Any]:
    assert event is not None
    return event.payload


def _links(lab: str, n: int) -> Callable[[int, str], list[AuditRecord]]:
    """A build callback chaining `n` records after the head (a stand-in for the hashing,
    which is governance.audit's business, not the store's)."""

    def build(seq: int, head: str) -> list[AuditRecord]:
        out = []
        for number in range(seq + 1, seq + n + 1):
            digest = hashlib.sha256(f"{number}{head}".encode()).hexdigest()
            out.append(AuditRecord(lab, number, 1.5, "k", "a", "s", "{}", None, head, digest))
            head = digest
        return out

    return build


def _approval(approval_id: str, expires_in: float = 60.0, lab: str = "lab") -> Approval:
    now = time.time()
    return Approval(
        approval_id, lab, "r1", "a1", {"kind": "shell", "command": "git push"}, "pushes",
        0.75, "r1:3", now, now + expires_in,
    )  # fmt: skip
