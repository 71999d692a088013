"""The `Auditor` the command center runs: it appends to a lab's chain, signs its head,
and follows the store's events and gateway attempts into it.

Owns appending (one transaction per batch), moving the signed head and writing
database checkpoints, and turning store events (trial transitions, agent states,
approvals) and gateway attempts into records. Knows nothing about policies, the
CLI or the web page; the SQL is the store's.

The Auditor never extends a chain that no longer reaches its signed head (records deleted or
rewritten, or the whole chain gone): it raises `AuditBroken` rather than bury
the evidence, and a person looks (`overnight audit verify`).

Appends from any number of threads and processes form one chain: the store
reads the head and inserts after it in one serialized transaction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overnight.errors import UserError
from overnight.governance.audit.keys import (
    SLOT,
    AuditKey,
    SignedHead,
    chain_name,
    check_key_outside,
    load_key,
    read_head,
    read_slots,
)
from overnight.governance.audit.record import (
    GENESIS,
    Entry,
    canonical,
    correlation_id,
    record_hash,
    storable,
)
from overnight.records import AuditCheckpoint, AuditRecord, Event
from overnight.store import Store

log = logging.getLogger("overnight.audit")

CHECKPOINT_EVERY = 1000
"""Records between two database checkpoints (the signed head moves on every append)."""
FOLLOWED = ("run.", "trial.", "agent.", "approval.")
"""Store event kinds the Auditor turns into audit records."""


class AuditBroken(UserError):
    """The chain no longer matches its signed head (records deleted or rewritten): the
    Auditor will not extend it, which would bury the evidence."""


class Auditor:
    """Appends to one lab's chain and signs its head; follows the store into it.

    Thread-safe; several Auditors (in several processes) may append to one chain
    at once: the store serializes appends and the signed head only moves forward.
    `start()` runs the follower in a thread; `close()` stops it, audits what is
    left and writes a checkpoint.
    """

    def __init__(
        self,
        store: Store,
        lab: str,
        *,
        key: AuditKey | None = None,
        lab_root: Path | None = None,
    ) -> None:
        self.store = store
        self.lab = lab
        self.key = key or load_key(create=True)
        assert self.key is not None
        if lab_root is not None:
            check_key_outside(self.key, lab_root)
        self.head_path = self.key.heads / f"{chain_name(store.url, lab)}.head"
        self._genesis: str | None = None
        self._follow_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # appending ---------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        actor: str,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        correlation: str | None = None,
    ) -> AuditRecord:
        records = self.append_many([Entry(kind, actor, subject, payload, correlation)])
        assert records
        return records[0]

    def append_many(
        self,
        entries: Sequence[Entry],
        *,
        cursors: Mapping[str, tuple[int, int]] | None = None,
    ) -> list[AuditRecord] | None:
        """Append `entries` in order, in one transaction; see `Store.append_audit` for
        `cursors` (None back when another follower moved one first)."""
        lab = self.lab
        prepared = [
            (
                storable(e.kind),
                storable(e.actor),
                storable(e.subject),
                storable(canonical(dict(e.payload or {}))),
                None if e.correlation is None else storable(e.correlation),
            )
            for e in entries
        ]

        def build(seq: int, head: str) -> list[AuditRecord]:
            if prepared:
                self._refuse_a_broken_chain(seq, head)
            at = round(time.time(), 6)
            prev = head or GENESIS
            out = []
            for number, (kind, actor, subject, payload, corr) in enumerate(prepared, seq + 1):
                digest = record_hash(lab, number, at, kind, actor, subject, payload, corr, prev)
                out.append(
                    AuditRecord(lab, number, at, kind, actor, subject, payload, corr, prev, digest)
                )
                prev = digest
            return out

        records = self.store.append_audit(lab, build, cursors=cursors)
        if records:
            first, last = records[0], records[-1]
            if first.seq == 1:
                self._genesis = first.hash
            signed = self._sign_head(last, first)
            if signed and (first.seq - 1) // CHECKPOINT_EVERY != last.seq // CHECKPOINT_EVERY:
                self.store.add_audit_checkpoint(self._checkpoint(last))
        return records

    def checkpoint(self) -> AuditCheckpoint | None:
        """Sign the chain's head into the store and the head file (None when empty, or
        when the chain no longer matches its signed head)."""
        head = self.store.audit_head(self.lab)
        if head is None or not self._sign_head(head, None):
            return None
        checkpoint = self._checkpoint(head)
        self.store.add_audit_checkpoint(checkpoint)
        return checkpoint

    def _checkpoint(self, record: AuditRecord) -> AuditCheckpoint:
        assert self.key is not None
        mac = self.key.sign(record.seq, record.hash)
        return AuditCheckpoint(self.lab, record.seq, record.hash, time.time(), self.key.id, mac)

    def _genesis_hash(self) -> str:
        if self._genesis is None:
            first = self.store.audit_records(self.lab, limit=1)
            self._genesis = first[0].hash if first else ""
        return self._genesis

    def _refuse_a_broken_chain(self, seq: int, head: str) -> None:
        """Inside the append's transaction, before anything is written: the chain must
        still reach its signed head. Deleted records (a chain shorter than its head, or
        none at all) or a rewritten one (another hash at the head's seq) would be buried
        under new records, so a person looks first."""
        signed = read_head(self.head_path)
        if signed is None:
            return
        fix = (
            "\n  fix: see `overnight audit verify`; to start over on purpose (you deleted the "
            f"lab's database), move {signed.path} away."
        )
        if seq == 0:
            raise AuditBroken(
                f"the audit chain of lab {self.lab!r} is empty, but {signed.path} holds its "
                f"signed head at seq {signed.seq}: its records were deleted.{fix}"
            )
        if signed.seq > seq:
            raise AuditBroken(
                f"the audit chain of lab {self.lab!r} ends at seq {seq}, but its signed head "
                f"is at seq {signed.seq}: records were deleted.{fix}"
            )
        if signed.seq == seq and signed.hash != head:
            raise AuditBroken(
                f"the audit chain of lab {self.lab!r} was rewritten: its hash at seq {seq} is "
                f"not the signed one.{fix}"
            )

    def _sign_head(self, record: AuditRecord, first: AuditRecord | None) -> bool:
        """Move the signed head forward to `record` (`first` the earliest record appended
        with it) if the chain still runs through the head signed before; never back,
        never to another chain. False when the chain no longer matches."""
        assert self.key is not None
        genesis = self._genesis_hash()
        self.head_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time, across processes
            slots = read_slots(os.pread(fd, 2 * SLOT, 0), self.head_path)
            newer = max(slots, key=lambda i: slots[i].seq) if slots else 1
            current = slots.get(newer)
            if current is not None:
                if current.genesis != genesis:
                    log.error(
                        "%s is the signed head of another chain of lab %s; not replacing it "
                        "(`overnight audit verify` reports the mismatch)",
                        self.head_path, self.lab,
                    )  # fmt: skip
                    return False
                if current.seq >= record.seq:
                    return True
                if not self._runs_through(current, first):
                    log.error(
                        "the audit chain of lab %s no longer runs through its signed head at "
                        "seq %d; not signing past it (`overnight audit verify` says where)",
                        self.lab, current.seq,
                    )  # fmt: skip
                    return False
            data = {
                "lab": self.lab,
                "seq": record.seq,
                "hash": record.hash,
                "genesis": genesis,
                "at": time.time(),
                "key_id": self.key.id,
                "mac": self.key.sign(record.seq, record.hash),
            }
            line = (json.dumps(data) + "\n").encode()[:SLOT]
            os.pwrite(fd, line.ljust(SLOT, b"\0"), (1 - newer) * SLOT)  # the older slot
            return True
        finally:
            os.close(fd)

    def _runs_through(self, signed: SignedHead, first: AuditRecord | None) -> bool:
        """Whether the chain still holds the signed head's hash at its seq."""
        if first is not None and first.seq == signed.seq + 1:
            return first.prev_hash == signed.hash  # what we just appended links to it
        there = self.store.audit_records(self.lab, after=signed.seq - 1, limit=1)
        return bool(there) and there[0].seq == signed.seq and there[0].hash == signed.hash

    # following the store -------------------------------------------------------------------

    def follow_once(self, limit: int = 500) -> int:
        """Audit every store event (of the FOLLOWED kinds) and gateway attempt not yet
        audited, in id order; returns how many records were appended. The positions
        move with the records, so a restart neither skips nor repeats one."""
        appended = 0
        with self._follow_lock:
            while True:
                cursors = self.store.audit_cursors(self.lab)
                after_event, after_attempt = cursors.get("events", 0), cursors.get("attempts", 0)
                events = self.store.lab_events(self.lab, after=after_event, limit=limit)
                attempts = self.store.attempts(self.lab, after=after_attempt, limit=limit)
                if not events and not attempts:
                    return appended
                entries = [_from_event(e) for e in events if e.kind.startswith(FOLLOWED)]
                entries += [_from_attempt(a) for a in attempts]
                moves: dict[str, tuple[int, int]] = {}
                if events:
                    moves["events"] = (after_event, events[-1].id)
                if attempts:
                    moves["attempts"] = (after_attempt, int(attempts[-1]["id"]))
                done = self.append_many(entries, cursors=moves)
                appended += len(done or [])  # None: another follower did these; read on

    def start(self, interval: float = 0.5) -> None:
        """Follow the store in a thread until `close()`."""
        if self._thread is not None:
            return
        self.follow_once()  # a chain that cannot be written stops the start, loudly
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._follow, args=(interval,), name="overnight-audit", daemon=True
        )
        self._thread.start()

    def _follow(self, interval: float) -> None:
        last = ""
        while not self._stop.wait(interval):
            try:
                self.follow_once()
                last = ""
            except Exception as exc:  # a database briefly away, or a broken chain: retry
                if str(exc) != last:  # once per problem, not twice a second
                    log.exception("auditing lab %s failed; retrying", self.lab)
                last = str(exc)

    def close(self) -> None:
        """Stop following, audit what is left, and write a checkpoint (clean shutdown)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        self.follow_once()
        self.checkpoint()


def _from_event(e: Event) -> Entry:
    data = dict(e.payload)
    correlation = None
    if e.kind.startswith("approval."):
        subject = f"approval {data.get('id')}"
        actor = data.get("by") or (e.agent if e.kind == "approval.requested" else "overnight")
        correlation = data.get("correlation")
    elif e.trial is not None:
        subject = f"trial {e.trial}"
        actor = e.agent or "overnight"
        correlation = correlation_id(e.run_id, e.trial)
    elif e.agent is not None:
        subject, actor = f"agent {e.agent}", e.agent
    else:
        subject, actor = f"run {e.run_id}", "overnight"
    payload = {"run": e.run_id, "event": e.id, "event_at": e.at, "detail": data}
    return Entry(e.kind, str(actor), subject, payload, correlation)


_ATTEMPT_AUDITED = (
    "request_id", "attempt", "trial", "route", "upstream", "model", "credential", "outcome",
    "status", "error", "started_at", "latency_s", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "cost_usd", "unpriced",
)  # fmt: skip


def _from_attempt(a: Mapping[str, Any]) -> Entry:
    payload = {k: a.get(k) for k in _ATTEMPT_AUDITED}
    payload["run"] = a.get("run_id")
    payload["attempt_id"] = a.get("id")
    if a.get("trial") and a.get("run_id"):
        correlation = correlation_id(str(a["run_id"]), str(a["trial"]))
    else:
        correlation = f"request:{a.get('request_id')}"
    return Entry(
        "gateway.attempt", str(a.get("agent")), f"model {a.get('route')}", payload, correlation
    )
