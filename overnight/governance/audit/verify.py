"""Checking an audit chain: recompute it and hold it against its checkpoints and signed head.

Owns `verify` and its `Verdict`: intact, or the first bad record and what happened
to it (edited, deleted, inserted, reordered, rewritten, truncated). Reads the
chain in pages, in constant memory. Knows nothing about who wrote the chain.

Records appended after the newest signed head (a crash between the commit and
the signing) are reported as unsigned, not as tampering; a chain no checkpoint
covers at all fails (it cannot be told from a forgery).
"""

from __future__ import annotations

from dataclasses import dataclass

from overnight.errors import UserError
from overnight.governance.audit.keys import ENV_KEY, AuditKey, find_head, key_path
from overnight.governance.audit.record import GENESIS, hash_of
from overnight.records import AuditCheckpoint, AuditRecord
from overnight.store import Store

PAGE = 5000


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: intact, or the first bad record and what is wrong with it."""

    records: int
    checkpoint: int | None
    """The newest signed seq that checked out."""
    problem: str | None = None
    seq: int | None = None
    """The first bad record (for a truncation, the first missing one)."""
    unsigned: int = 0
    """Records after the newest signed head (appended since, or by someone without the key)."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"audit chain broken at seq {self.seq}: {self.problem}"
        if self.checkpoint is None:
            return f"ok: {self.records} records, no checkpoint yet"
        return f"ok: {self.records} records, last checkpoint at seq {self.checkpoint}"


def verify(store: Store, lab: str, key: AuditKey | None) -> Verdict:
    """Recompute `lab`'s chain and check it against every checkpoint and the signed head.

    Reads the chain in pages (constant memory). Names the first bad record: an
    edited one (its hash does not match its contents), a deleted one (a gap), an
    inserted or moved one (a record hashed for another seq), a rewritten stretch
    (a signed hash that is no longer there), or a truncation (records the signed
    head covers are gone).
    """
    checkpoints = {c.seq: c for c in store.audit_checkpoints(lab)}
    first = store.audit_records(lab, limit=1)
    genesis = first[0].hash if first else None
    if key is None:
        if not first and not checkpoints:
            return Verdict(0, None)
        raise UserError(
            f"no audit key at {key_path()}: the chain of lab {lab!r} cannot be checked without "
            "the key that signed its checkpoints.\n"
            f"  fix: set {ENV_KEY} to the key file of the machine that ran the lab."
        )
    head = find_head(key, store.url, lab, genesis)
    if head is not None and genesis is not None and head.genesis != genesis:
        return Verdict(
            0, None,
            f"this is not the chain whose head {head.path} signed (it began with "
            f"{head.genesis[:12]}, this one with {genesis[:12]}): the audit was replaced",
            1,
        )  # fmt: skip

    def bad(seq: int, problem: str, count: int) -> Verdict:
        return Verdict(count, None, problem, seq)

    expected, prev, before_prev = 1, GENESIS, ""
    last_good_checkpoint = 0
    at_head: str | None = None
    after = 0
    while True:
        page = store.audit_records(lab, after=after, limit=PAGE)
        if not page:
            break
        for r in page:
            seq = r.seq
            if seq != expected:
                return bad(
                    expected,
                    f"record {expected} is missing (deleted): record {seq} follows record "
                    f"{expected - 1}",
                    expected - 1,
                )
            if hash_of(r) != r.hash:
                first_bad, problem = _why_hash_differs(r)
                return bad(first_bad, problem, first_bad - 1)
            if r.prev_hash != prev:
                if seq > 1 and r.prev_hash == before_prev:
                    return bad(
                        seq - 1,
                        f"record {seq - 1} was inserted: record {seq} links to record {seq - 2}",
                        seq - 2,
                    )
                return bad(seq, f"its prev hash is not record {seq - 1}'s hash", seq - 1)
            checkpoint = checkpoints.get(seq)
            if checkpoint is not None:
                unsigned = _checkpoint_problem(key, checkpoint)
                if unsigned:
                    return bad(seq, unsigned, seq - 1)
                if checkpoint.hash != r.hash:
                    since = last_good_checkpoint + 1
                    return bad(
                        since,
                        f"{_records(since, seq, past=True)} rewritten: the hash at seq {seq} "
                        "is not the one its checkpoint signed",
                        last_good_checkpoint,
                    )
                last_good_checkpoint = seq
            if head is not None and seq == head.seq:
                at_head = r.hash
            before_prev, prev = prev, r.hash
            expected += 1
        after = page[-1].seq
    count = expected - 1
    beyond = sorted(s for s in checkpoints if s > count)
    signed_to = max(beyond[-1] if beyond else 0, head.seq if head else 0)
    if signed_to > count:
        return bad(
            count + 1,
            f"truncated: {_records(count + 1, signed_to)} gone (signed up to seq "
            f"{signed_to}, the chain ends at seq {count})",
            count,
        )
    newest = last_good_checkpoint or None
    if head is not None:
        if not key.signed(head.seq, head.hash, head.mac):
            return bad(
                head.seq, f"the signed head {head.path} does not verify with this key", count
            )
        if at_head != head.hash:
            since = last_good_checkpoint + 1
            return bad(
                since,
                f"{_records(since, head.seq, past=True)} rewritten: the hash at seq {head.seq} "
                "is not the one its signed head holds",
                count,
            )
        newest = max(newest or 0, head.seq)
    if count and newest is None:
        return bad(
            1,
            f"no signed checkpoint covers the chain (none in the database, no signed head in "
            f"{key.heads}), so it cannot be told from a forgery; verify with the key of the "
            "machine that wrote it",
            count,
        )
    return Verdict(count, newest, unsigned=count - (newest or 0))


def _records(first: int, last: int, *, past: bool = False) -> str:
    if first == last:
        return f"record {first} {'was' if past else 'is'}"
    return f"records {first}..{last} {'were' if past else 'are'}"


def _why_hash_differs(r: AuditRecord) -> tuple[int, str]:
    """The first bad seq and what happened, for a record whose hash does not match."""
    for other in (*range(r.seq - 3, r.seq), *range(r.seq + 1, r.seq + 4)):
        if other >= 1 and hash_of(r, other) == r.hash:
            if other < r.seq:  # records other..seq-1 passed every check: they are new
                which = (
                    f"record {other} was"
                    if other == r.seq - 1
                    else (f"records {other}..{r.seq - 1} were")
                )
                return other, f"{which} inserted: record {r.seq} was written as seq {other}"
            return r.seq, f"records were reordered: record {r.seq} was written as seq {other}"
    return r.seq, "its contents do not match its hash (edited, or not written by overnight)"


def _checkpoint_problem(key: AuditKey, c: AuditCheckpoint) -> str | None:
    if c.key_id != key.id:
        return f"its checkpoint was signed by key {c.key_id}, not the key at {key.path} ({key.id})"
    if not key.signed(c.seq, c.hash, c.mac):
        return "its checkpoint's signature does not verify (forged or edited)"
    return None
