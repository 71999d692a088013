"""The audit chain: real lab events in, tampering detected by `overnight audit verify`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from overnight.errors import UserError
from overnight.governance.audit import (
    ENV_KEY,
    AuditBroken,
    AuditKey,
    Auditor,
    Entry,
    canonical,
    load_key,
    record_hash,
    verify,
)
from overnight.store import SqlStore, open_store, store_url
from overnight.testing.store_contract import attempt_row
from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli, started


def _key(root: Path) -> AuditKey:
    """The key `overnight run` signs with in this suite (see conftest); heads are kept per
    chain, so labs sharing it stay apart."""
    key = load_key(Path(os.environ[ENV_KEY]), create=True)
    assert key is not None
    return key


def _env(key: AuditKey) -> dict[str, str]:
    return {ENV_KEY: str(key.path)}


def _run(lab: Path, *args: str, env: dict[str, str] | None = None) -> None:
    done = run_cli("run", str(lab), *args, env=env)
    assert done.returncode == 0, done.stderr


def _lab_store(lab: Path) -> SqlStore:
    store = open_store(store_url(lab))
    assert isinstance(store, SqlStore)
    return store


def _followed_events(store: SqlStore, lab: str = "toy") -> list[tuple[str, str | None]]:
    return [
        (e.kind, f"{e.run_id}:{e.trial}" if e.trial is not None else None)
        for e in store.lab_events(lab, limit=100_000)
        if e.kind.startswith(("run.", "trial.", "agent.", "approval."))
    ]


def _audited(store: SqlStore, lab: str = "toy") -> list[tuple[str, str | None]]:
    return [
        (r.kind, r.correlation)
        for r in store.audit_records(lab, limit=100_000)
        if r.kind not in ("gateway.attempt", "decision", "policy.loaded")
    ]


# -- the record format --------------------------------------------------------------------------


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # non-finite: tested below
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    actor=st.text(),
    subject=st.text(),
    kind=st.text(min_size=1),
    correlation=st.none() | st.text(),
    payload=st.dictionaries(st.text(), json_values, max_size=4),
    at=st.floats(min_value=0, max_value=4e9),
    seq=st.integers(min_value=1, max_value=2**53),
)
def test_a_records_hash_is_sha256_of_its_canonical_json(
    actor: str,
    subject: str,
    kind: str,
    correlation: str | None,
    payload: dict[str, object],
    at: float,
    seq: int,
) -> None:
    """The fast hand-assembled form is byte for byte the documented canonical JSON."""
    try:
        (actor + subject + kind + (correlation or "") + canonical(payload)).encode()
    except UnicodeEncodeError:
        return  # a lone surrogate: the Auditor replaces it before hashing (tested below)
    prev = "ab" * 32
    body = {
        "actor": actor, "at": at, "correlation": correlation, "kind": kind, "lab": "lab",
        "payload": payload, "prev": prev, "seq": seq, "subject": subject,
    }  # fmt: skip
    text_ = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(text_.encode()).hexdigest()
    got = record_hash("lab", seq, at, kind, actor, subject, canonical(payload), correlation, prev)
    assert got == expected


def test_payloads_that_json_cannot_say_are_made_storable(tmp_path: Path) -> None:
    store = _lab_store(tmp_path)
    auditor = Auditor(store, "lab", key=_key(tmp_path))
    record = auditor.append(
        "decision", "a\udc80\x00", "s", {"metric": float("nan"), 3: "int key", "x": {1, 2}}
    )
    assert json.loads(record.payload)["metric"] == "nan"
    assert record.actor == "a?\ufffd"
    assert verify(store, "lab", auditor.key).ok
    store.close()


# -- the key ------------------------------------------------------------------------------------


def test_the_key_is_made_once_mode_600_and_kept_out_of_the_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    keys = []

    def make() -> None:
        keys.append(load_key(create=True))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    path = tmp_path / "config" / "overnight" / "audit.key"
    assert len(keys) == 4 and len({k.secret for k in keys if k is not None}) == 1
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(os.listdir(path.parent)) == 1  # no temporary files left behind

    lab = make_lab(tmp_path / "lab")
    inside = load_key(lab / ".overnight" / "audit.key", create=True)
    assert inside is not None
    store = _lab_store(lab)
    with pytest.raises(UserError, match="inside the lab"):
        Auditor(store, "toy", key=inside, lab_root=lab)
    store.close()


# -- appending ----------------------------------------------------------------------------------


def test_concurrent_appenders_never_fork_the_chain(store: SqlStore, tmp_path: Path) -> None:
    key = _key(tmp_path)

    def append(n: int) -> None:
        auditor = Auditor(store, "lab", key=key)  # one per thread, as in separate processes
        for i in range(n):
            if i % 2:
                auditor.append("decision", f"t{n}", "shell", {"i": i})
            else:
                auditor.append_many([Entry("decision", f"t{n}", "edit", {"i": i})] * 3)

    threads = [threading.Thread(target=append, args=(n,)) for n in (10, 11, 12, 13)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = sum(n // 2 + (n - n // 2) * 3 for n in (10, 11, 12, 13))
    verdict = verify(store, "lab", key)
    assert verdict.ok, verdict.summary()
    assert (verdict.records, verdict.checkpoint) == (total, total)  # the head is signed


APPENDER = """
import sys
from pathlib import Path
from overnight.governance.audit import Auditor, load_key
from overnight.store import open_store
store = open_store(sys.argv[1])
auditor = Auditor(store, "lab", key=load_key(Path(sys.argv[2])))
for i in range(60):
    auditor.append("decision", sys.argv[3], "shell", {"i": i})
store.close()
"""


def test_appenders_in_separate_processes_never_fork_the_chain(tmp_path: Path) -> None:
    key = _key(tmp_path)
    url = f"sqlite:///{tmp_path / 'overnight.db'}"
    open_store(url).close()
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                started([sys.executable, "-c", APPENDER, url, str(key.path), f"p{i}"])
            )
            for i in range(3)
        ]
        assert [p.wait(120) for p in procs] == [0, 0, 0]
    store = open_store(url)
    verdict = verify(store, "lab", key)
    assert verdict.ok and (verdict.records, verdict.checkpoint) == (180, 180), verdict.summary()
    store.close()


# -- following the lab --------------------------------------------------------------------------


def test_a_run_audits_itself_in_order_and_a_follower_resumes_exactly(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    key = _key(tmp_path)
    _run(lab, "--trials", "3", env=_env(key))
    store = _lab_store(lab)
    run = store.latest_run("toy")
    assert run is not None
    # `overnight run` followed every event into the chain, in order, its own stop included
    # (recorded while its command center still runs), and judged each trial
    events = _followed_events(store)
    assert events[-1] == ("run.stopped", None) and _audited(store) == events
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["run.created", "run.started"] and kinds.count("trial.kept") >= 1
    assert ("trial.measured", f"{run.id}:1") in events  # run:trial ties record, span and ledger
    decisions = [r for r in store.audit_records("toy", limit=100_000) if r.kind == "decision"]
    judged = {r.correlation for r in decisions}
    assert {f"{run.id}:{t.number}" for t in store.trials(run.id, agent="t")} <= judged

    # what happens while no command center runs is taken up by the next follower, once
    store.record_attempts(
        "toy", run.id, [attempt_row("t", 0.5, time.time(), trial="2", request_id="req-a")]
    )
    auditor = Auditor(store, "toy", key=key, lab_root=lab)
    assert auditor.follow_once(limit=7) == 1  # the attempt
    attempt = next(r for r in store.audit_records("toy") if r.kind == "gateway.attempt")
    assert (attempt.actor, attempt.correlation) == ("t", f"{run.id}:2")
    assert attempt.data()["request_id"] == "req-a" and attempt.data()["cost_usd"] == 0.5
    # a restart neither repeats nor skips
    again = Auditor(store, "toy", key=key, lab_root=lab)
    assert again.follow_once() == 0
    _run(lab, "--trials", "2", env=_env(key))
    assert again.follow_once() == 0  # the second run audited itself, its stop included
    assert _audited(store) == _followed_events(store)
    again.close()
    count = len(store.audit_records("toy", limit=100_000))
    store.close()
    done = run_cli("audit", "verify", str(lab), env=_env(key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok: {count} records, last checkpoint at seq {count}"


def test_the_follower_thread_and_a_second_follower_audit_each_event_once(
    store: SqlStore, tmp_path: Path
) -> None:
    key = _key(tmp_path)
    store.create_run("r1", "lab", "base", {}, {})
    first, second = Auditor(store, "lab", key=key), Auditor(store, "lab", key=key)
    first.start(interval=0.01)
    second.start(interval=0.01)
    try:
        for i in range(40):
            store.append_event("r1", "agent.state", {"state": "working", "i": i}, agent="a1")
            store.append_event("r1", "gateway.brownout", {"i": i})  # not followed
        expected = len(_followed_events(store, "lab"))
        assert expected == 41
        from overnight.sessions import wait_until

        wait_until(lambda: len(store.audit_records("lab", limit=1000)) >= expected, 30)
    finally:
        first.close()
        second.close()
    records = store.audit_records("lab", limit=1000)
    assert [r.data()["event"] for r in records] == sorted({r.data()["event"] for r in records})
    assert len(records) == expected
    assert records[-1].data()["detail"] == {"state": "working", "i": 39}
    verdict = verify(store, "lab", key)
    assert verdict.ok and verdict.checkpoint == expected


def test_a_chain_whose_records_were_all_deleted_is_not_silently_restarted(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab")
    key = _key(tmp_path)
    store = _lab_store(lab)
    auditor = Auditor(store, "toy", key=key, lab_root=lab)
    for i in range(5):
        auditor.append("decision", "a1", "shell", {"i": i})
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM ov_audit"))
        conn.execute(text("DELETE FROM ov_audit_checkpoints"))
    done = run_cli("audit", "verify", str(lab), env=_env(key))
    assert done.returncode == 1
    assert "broken at seq 1" in done.stderr and "truncated: records 1..5 are gone" in done.stderr
    with pytest.raises(UserError, match="its records were deleted"):
        Auditor(store, "toy", key=key).append("decision", "a1", "shell")
    assert store.audit_records("toy") == []
    store.close()


def test_verify_needs_the_key_that_signed_the_chain(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    key = _key(tmp_path)
    store = _lab_store(lab)
    Auditor(store, "toy", key=key).append("decision", "a1", "shell")
    store.close()
    missing = run_cli(
        "audit", "verify", str(lab), env={ENV_KEY: str(tmp_path / "nowhere" / "audit.key")}
    )
    assert missing.returncode == 2 and "no audit key at" in missing.stderr
    other = load_key(tmp_path / "other" / "audit.key", create=True)
    assert other is not None
    wrong = run_cli("audit", "verify", str(lab), env=_env(other))  # its signed heads are elsewhere
    assert wrong.returncode == 1 and "no signed checkpoint covers the chain" in wrong.stderr
    store = _lab_store(lab)
    Auditor(store, "toy", key=key).checkpoint()
    store.close()
    wrong = run_cli("audit", "verify", str(lab), env=_env(other))
    assert wrong.returncode == 1 and "signed by key" in wrong.stderr


def test_a_moved_lab_keeps_its_signed_head(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    key = _key(tmp_path)
    store = _lab_store(lab)
    auditor = Auditor(store, "toy", key=key)
    for i in range(3):
        auditor.append("decision", "a1", "shell", {"i": i})
    store.close()
    moved = lab.rename(tmp_path / "moved")
    with sqlite3.connect(moved / ".overnight" / "overnight.db") as conn:
        conn.execute("DELETE FROM ov_audit WHERE seq = 3")
    done = run_cli("audit", "verify", str(moved), env=_env(key))
    assert done.returncode == 1 and "truncated: record 3 is gone" in done.stderr


def test_pg_and_sqlite_chains_verify_and_name_an_edit(store: SqlStore, tmp_path: Path) -> None:
    key = _key(tmp_path)
    auditor = Auditor(store, "lab", key=key)
    for i in range(30):
        auditor.append("decision", "a1", "shell", {"i": i, "x": i / 7, "u": "é"}, f"r:{i}")
    assert verify(store, "lab", key).summary() == "ok: 30 records, last checkpoint at seq 30"
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE ov_audit SET actor = 'a2' WHERE seq = 12"))
    verdict = verify(store, "lab", key)
    assert (verdict.ok, verdict.seq) == (False, 12) and "edited" in (verdict.problem or "")


# -- tampering ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, AuditKey, int]]:
    """A lab after a real run, its events audited and checkpointed; (lab, key, records)."""
    root = tmp_path_factory.mktemp("audited")
    lab = make_lab(root / "lab")
    key = _key(root)
    _run(lab, "--trials", "3")
    store = _lab_store(lab)
    Auditor(store, "toy", key=key, lab_root=lab).close()
    count = len(store.audit_records("toy", limit=100_000))
    store.close()
    db = lab / ".overnight" / "overnight.db"
    with sqlite3.connect(db) as src, sqlite3.connect(root / "pristine.db") as dst:
        src.backup(dst)
    assert count >= 20
    yield lab, key, count


@pytest.fixture
def chain(audited_lab: tuple[Path, AuditKey, int]) -> Iterator[tuple[Path, AuditKey, int]]:
    """The audited lab, restored to its untouched state before each tampering."""
    lab, _key, _count = audited_lab
    db = lab / ".overnight" / "overnight.db"
    with sqlite3.connect(lab.parent / "pristine.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    yield audited_lab


def _tamper(lab: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    with sqlite3.connect(lab / ".overnight" / "overnight.db") as conn:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())


def _record(lab: Path, seq: int) -> dict[str, object]:
    with sqlite3.connect(lab / ".overnight" / "overnight.db") as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM ov_audit WHERE seq = ?", (seq,)).fetchone())


def _rehash(r: dict[str, object], payload: str, prev: str) -> str:
    """What anyone can compute without the key: a record's hash, for forging one."""
    correlation = r["correlation"]
    return record_hash(
        str(r["lab"]), int(str(r["seq"])), float(str(r["at"])), str(r["kind"]), str(r["actor"]),
        str(r["subject"]), payload, None if correlation is None else str(correlation), prev,
    )  # fmt: skip


def _verify_fails(lab: Path, key: AuditKey, seq: int, *words: str) -> None:
    done = run_cli("audit", "verify", str(lab), env=_env(key))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"audit chain broken at seq {seq}:" in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_an_untouched_chain_verifies(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, count = chain
    done = run_cli("audit", "verify", str(lab), env=_env(key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok: {count} records, last checkpoint at seq {count}"


def _first_mentioning(lab: Path, text: str, start: int) -> int:
    """The first record from `start` on whose payload mentions `text`."""
    with sqlite3.connect(lab / ".overnight" / "overnight.db") as conn:
        (seq,) = conn.execute(
            "SELECT min(seq) FROM ov_audit WHERE seq >= ? AND instr(payload, ?) > 0",
            (start, text),
        ).fetchone()
    assert seq is not None
    return int(seq)


def test_an_edited_record_is_named(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, _ = chain
    seq = _first_mentioning(lab, "run", 5)
    _tamper(lab, f"UPDATE ov_audit SET payload = replace(payload, 'run', 'fun') WHERE seq = {seq}")
    _verify_fails(lab, key, seq, "edited")


def test_a_deleted_record_is_named(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, _ = chain
    _tamper(lab, "DELETE FROM ov_audit WHERE seq = 5")
    _verify_fails(lab, key, 5, "record 5 is missing (deleted)")


def test_an_inserted_record_is_named_even_with_a_well_formed_hash(
    chain: tuple[Path, AuditKey, int],
) -> None:
    lab, key, _ = chain
    before = _record(lab, 4)
    fake = {**before, "seq": 5, "kind": "decision", "payload": '{"effect":"allow"}'}
    fake["hash"] = _rehash(fake, str(fake["payload"]), str(before["hash"]))
    fake["prev_hash"] = before["hash"]
    _tamper(
        lab,
        "UPDATE ov_audit SET seq = -seq WHERE seq >= 5",
        "UPDATE ov_audit SET seq = 1 - seq WHERE seq < 0",
    )
    columns = ", ".join(fake)
    _tamper(
        lab,
        f"INSERT INTO ov_audit ({columns}) VALUES ({', '.join('?' * len(fake))})",
        params=tuple(fake.values()),
    )
    _verify_fails(lab, key, 5, "record 5 was inserted")


def test_a_crudely_inserted_record_is_named(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, _ = chain
    _tamper(
        lab,
        "UPDATE ov_audit SET seq = -seq WHERE seq >= 5",
        "UPDATE ov_audit SET seq = 1 - seq WHERE seq < 0",
        "INSERT INTO ov_audit (lab, seq, at, kind, actor, subject, payload, correlation,"
        " prev_hash, hash) VALUES ('toy', 5, 1.0, 'decision', 'me', 'x', '{}', NULL, 'p', 'h')",
    )
    _verify_fails(lab, key, 5, "not written by overnight")


def test_reordered_records_are_named(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, _ = chain
    _tamper(
        lab,
        "UPDATE ov_audit SET seq = -1 WHERE seq = 5",
        "UPDATE ov_audit SET seq = 5 WHERE seq = 6",
        "UPDATE ov_audit SET seq = 6 WHERE seq = -1",
    )
    _verify_fails(lab, key, 5, "reordered", "record 5 was written as seq 6")


def test_truncation_after_the_last_database_checkpoint_is_caught_by_the_signed_head(
    chain: tuple[Path, AuditKey, int],
) -> None:
    lab, key, count = chain
    _tamper(
        lab,
        f"DELETE FROM ov_audit WHERE seq > {count - 3}",
        f"DELETE FROM ov_audit_checkpoints WHERE seq > {count - 3}",
    )
    _verify_fails(lab, key, count - 2, f"truncated: records {count - 2}..{count} are gone")


def test_a_rewritten_chain_fails_its_signatures(chain: tuple[Path, AuditKey, int]) -> None:
    """Editing a record and recomputing every later hash needs no key; the signed
    checkpoint still tells."""
    lab, key, count = chain
    edited = _first_mentioning(lab, "run", 5)
    prev = str(_record(lab, edited - 1)["hash"])
    for seq in range(edited, count + 1):
        r = _record(lab, seq)
        payload = str(r["payload"]).replace("run", "fun") if seq == edited else str(r["payload"])
        digest = _rehash(r, payload, prev)
        _tamper(
            lab,
            "UPDATE ov_audit SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            params=(payload, prev, digest, seq),
        )
        prev = digest
    # (the newest checkpoint signed by the run itself, before its last event, says so)
    _verify_fails(lab, key, 1, "records 1..", "were rewritten", "its checkpoint signed")


def test_a_forged_checkpoint_is_named(chain: tuple[Path, AuditKey, int]) -> None:
    lab, key, count = chain
    _tamper(lab, f"UPDATE ov_audit_checkpoints SET mac = '{'0' * 64}' WHERE seq = {count}")
    _verify_fails(lab, key, count, "signature does not verify")


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("DELETE FROM ov_audit WHERE seq > {last} - 2", "ends at seq {n}, but its signed head"),
        ("UPDATE ov_audit SET actor = 'x', hash = 'x' WHERE seq = {last}", "was rewritten"),
        ("DELETE FROM ov_audit", "is empty, but .* holds its signed head"),
    ],
    ids=["truncated", "rewritten", "deleted"],
)
def test_the_auditor_will_not_bury_tampering_under_new_records(
    chain: tuple[Path, AuditKey, int], statement: str, problem: str
) -> None:
    lab, key, count = chain
    _tamper(lab, statement.format(last=count))
    store = _lab_store(lab)
    before = store.audit_records("toy", limit=1000)
    try:
        with pytest.raises(AuditBroken, match=problem.format(n=count - 2)):
            Auditor(store, "toy", key=key).append("decision", "a1", "shell")
        assert store.audit_records("toy", limit=1000) == before  # nothing written
    finally:
        store.close()


def test_a_forged_tail_is_not_signed(chain: tuple[Path, AuditKey, int]) -> None:
    """Rewrite the chain and add a record past the signed head: the next real append
    goes in, but the head is not moved onto the forgery."""
    lab, key, count = chain
    prev = str(_record(lab, count - 1)["hash"])
    last = _record(lab, count)
    forged = _rehash({**last, "actor": "nobody"}, str(last["payload"]), prev)
    extra = {**last, "seq": count + 1, "prev_hash": forged}
    extra["hash"] = _rehash(extra, str(extra["payload"]), forged)
    _tamper(lab, "DELETE FROM ov_audit_checkpoints")  # no key needed to remove those
    _tamper(
        lab,
        "UPDATE ov_audit SET actor = 'nobody', hash = ? WHERE seq = ?",
        params=(forged, count),
    )
    _tamper(
        lab,
        f"INSERT INTO ov_audit ({', '.join(extra)}) VALUES ({', '.join('?' * len(extra))})",
        params=tuple(extra.values()),
    )
    store = _lab_store(lab)
    try:
        Auditor(store, "toy", key=key).append("decision", "a1", "shell")
    finally:
        store.close()
    # the signed hash at `count` is gone; nothing signed before it says which record changed
    _verify_fails(lab, key, 1, f"records 1..{count} were rewritten", "its signed head holds")


# -- export -------------------------------------------------------------------------------------


def test_export_streams_records_anyone_can_check(chain: tuple[Path, AuditKey, int]) -> None:
    lab, _key, count = chain
    done = run_cli("audit", "export", str(lab), "--jsonl")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == count
    prev = "0" * 64
    for seq, line in enumerate(lines, start=1):
        record = json.loads(line)
        claimed = record.pop("hash")
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(body.encode()).hexdigest() == claimed  # the documented recipe
        assert (record["seq"], record["prev"]) == (seq, prev)
        prev = claimed
    assert json.loads(lines[0])["kind"] == "run.created"
    missing = run_cli("audit", "export", str(lab))
    assert missing.returncode == 2 and "--jsonl" in missing.stderr


MAX_RSS = """
import resource, subprocess, sys
with open(sys.argv[2], "w") as out:
    code = subprocess.call(
        [sys.executable, "-m", "overnight", "audit", "export", sys.argv[1], "--jsonl"], stdout=out
    )
assert code == 0
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _export_peak_kb(lab: Path, out: Path) -> int:
    """Peak memory of one `overnight audit export` process writing to `out`."""
    done = subprocess.run(
        [sys.executable, "-c", MAX_RSS, str(lab), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_export_memory_does_not_grow_with_the_chain(tmp_path: Path) -> None:
    key = _key(tmp_path)
    small, big = make_lab(tmp_path / "small"), make_lab(tmp_path / "big")
    for lab, batches in ((small, 1), (big, 24)):
        store = _lab_store(lab)
        auditor = Auditor(store, "toy", key=key)
        for _ in range(batches):
            auditor.append_many([Entry("decision", "a1", "shell", {"pad": "x" * 4000})] * 500)
        store.close()
    small_kb = _export_peak_kb(small, tmp_path / "small.jsonl")
    big_kb = _export_peak_kb(big, tmp_path / "big.jsonl")
    written = (tmp_path / "big.jsonl").stat().st_size
    assert written > 48_000_000 and len((tmp_path / "big.jsonl").read_text().splitlines()) == 12_000
    # 12,000 records of 4 KB stream through pages of 1,000: the peak grows by far less
    # than the 48 MB written
    assert big_kb - small_kb < written / 1024 / 3, (small_kb, big_kb)
