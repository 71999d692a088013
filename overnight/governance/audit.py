"""The audit chain: append-only, hash-chained records of what the lab and its agents did.

Owns the record format, the signing key, signed checkpoints and heads, `verify`,
`export_jsonl`, and the `Auditor` the command center runs: it appends decisions
and follows the store's events (trial transitions, agent states, approvals) and
gateway attempts into the chain. Knows nothing about policies, the CLI or the
web page; the SQL is the store's.

**Record hash.** Each record is `seq, at, kind, actor, subject, payload,
correlation` of one lab, plus `prev` (the previous record's hash; 64 zeros for
seq 1). Its `hash` is the lowercase hex SHA-256 of its canonical JSON: the
object `{"actor", "at", "correlation", "kind", "lab", "payload", "prev", "seq",
"subject"}` serialized with keys sorted, no whitespace (`,` and `:`), strings
as UTF-8 (no `\\u` escapes for non-ASCII), no NaN or Infinity (a non-finite
number in a payload is written as the string "nan", "inf" or "-inf"); in
Python, `json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False).encode()`. `at` is seconds since the epoch
rounded to microseconds, written as the shortest decimal that reads back as
the same double. The payload is stored as its canonical text and hashed as
stored. `overnight audit export --jsonl` writes each record with its `hash`:
drop `hash`, serialize canonically, SHA-256, and you have it again.

**Checkpoints.** A checkpoint is HMAC-SHA256 over `"<seq>:<hash>"` with a key
kept outside every lab and worktree (`$OVERNIGHT_AUDIT_KEY`, else
`$XDG_CONFIG_HOME/overnight/audit.key`, else `~/.config/overnight/audit.key`,
created mode 600 on first use). Two kinds, both signed:

- the *signed head*: after every append the Auditor signs the new head and
  writes it beside the key (`audit-heads/<chain>.json`), out of reach of
  whoever can write the database. Deleting records from the end is then
  caught by `verify`, since the head says how far the chain went; rewriting
  the chain (editing a record and recomputing every later hash, which needs
  no key) is caught because the head's hash no longer matches.
- database checkpoints, every `CHECKPOINT_EVERY` records and at a clean
  shutdown, kept in the store: they survive the loss of the head file and
  narrow a rewrite down to the records between two of them.

Records appended after the newest signed head (a crash between the commit and
the signing) are reported as unsigned, not as tampering; a chain no checkpoint
covers at all fails (it cannot be told from a forgery). The Auditor never
extends a chain that no longer reaches its signed head (records deleted or
rewritten, or the whole chain gone): it raises `AuditBroken` rather than bury
the evidence, and a person looks (`overnight audit verify`).

Appends from any number of threads and processes form one chain: the store
reads the head and inserts after it in one serialized transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from overnight.errors import UserError
from overnight.records import AuditCheckpoint, AuditRecord, Event
from overnight.store import Store

log = logging.getLogger("overnight.audit")

ENV_KEY = "OVERNIGHT_AUDIT_KEY"
GENESIS = "0" * 64
"""`prev` of the first record of every chain."""
CHECKPOINT_EVERY = 1000
"""Records between two database checkpoints (the signed head moves on every append)."""
FOLLOWED = ("run.", "trial.", "agent.", "approval.")
"""Store event kinds the Auditor turns into audit records."""
PAGE = 5000


class AuditBroken(UserError):
    """The chain no longer matches its signed head (records deleted or rewritten): the
    Auditor will not extend it, which would bury the evidence."""


# -- the record format -------------------------------------------------------------------------


def canonical(value: Any) -> str:
    """The canonical JSON text of `value` (see the module docstring)."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError):  # NaN, a non-string key, a value JSON has no type for
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    """`value` in JSON's types: string keys, finite numbers; anything else as a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _text(value: str) -> str:
    """`value` as storable UTF-8 text: lone surrogates and NULs (PostgreSQL refuses them) go."""
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode()
    return value.replace("\x00", "\ufffd")


def _null(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def record_hash(
    lab: str,
    seq: int,
    at: float,
    kind: str,
    actor: str,
    subject: str,
    payload: str,
    correlation: str | None,
    prev: str,
) -> str:
    """SHA-256 of the record's canonical JSON; `payload` is its canonical text.

    Assembled by hand rather than with `canonical()` (same bytes, checked by the
    tests) because verification runs it 100,000 times.
    """
    text = (
        f'{{"actor":{encode_basestring(actor)},"at":{float(at)!r},'
        f'"correlation":{_null(correlation)},"kind":{encode_basestring(kind)},'
        f'"lab":{encode_basestring(lab)},"payload":{payload},"prev":{encode_basestring(prev)},'
        f'"seq":{int(seq)},"subject":{encode_basestring(subject)}}}'
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_of(r: AuditRecord, seq: int | None = None) -> str:
    return record_hash(
        r.lab, r.seq if seq is None else seq, r.at, r.kind, r.actor, r.subject, r.payload,
        r.correlation, r.prev_hash,
    )  # fmt: skip


def correlation_id(run_id: str, trial: int | str) -> str:
    """The id that ties an audit record, a span and a ledger row together: `run:trial`."""
    return f"{run_id}:{trial}"


@dataclass(frozen=True)
class Entry:
    """What a caller appends; the chain adds seq, time and hashes."""

    kind: str
    actor: str
    subject: str
    payload: Mapping[str, Any] | None = None
    correlation: str | None = None


# -- the key and the signed head ---------------------------------------------------------------


def key_path() -> Path:
    """Where the checkpoint key lives (see the module docstring)."""
    explicit = os.environ.get(ENV_KEY)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "overnight" / "audit.key"


@dataclass(frozen=True)
class AuditKey:
    """The secret that signs checkpoints. `id` names it on each checkpoint, safely."""

    path: Path
    secret: bytes

    @property
    def id(self) -> str:
        return hashlib.sha256(b"overnight audit key\0" + self.secret).hexdigest()[:16]

    @property
    def heads(self) -> Path:
        """Where signed heads are kept: beside the key, out of every lab."""
        return self.path.parent / "audit-heads"

    def sign(self, seq: int, hash_: str) -> str:
        return hmac.new(self.secret, f"{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()

    def signed(self, seq: int, hash_: str, mac: str) -> bool:
        return hmac.compare_digest(self.sign(seq, hash_), mac)


def load_key(path: Path | None = None, *, create: bool = False) -> AuditKey | None:
    """The key at `path` (default `key_path()`); made (mode 600) if `create` and missing,
    else None when missing."""
    path = path or key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic: of two processes creating it at once, one key wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not an overnight audit key ({exc}).\n"
            f"  fix: point {ENV_KEY} at the key file the command center made, or move this "
            "file away to make a new key (checkpoints signed with the old one then fail verify)."
        ) from None
    if len(secret) < 16:
        raise UserError(f"{path}: an audit key needs at least 16 bytes (32 hex digits).")
    return AuditKey(path, secret)


def check_key_outside(key: AuditKey, lab_root: Path) -> None:
    """Refuse a key inside the lab: its agents' worktrees live there and could read it."""
    root = lab_root.resolve()
    for what, where in (("key", key.path), ("signed heads", key.heads)):
        if where.resolve().is_relative_to(root):
            raise UserError(
                f"{ENV_KEY}={key.path}: the audit {what} would be inside the lab ({root}), "
                "where agents can read and change it.\n"
                "  fix: keep the key outside the lab, e.g. unset it to use "
                "~/.config/overnight/audit.key."
            )


def chain_name(store_url: str, lab: str) -> str:
    """A file name for the chain of `lab` in the database at `store_url` (password dropped)."""
    url = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1@", store_url)
    return hashlib.sha256(f"{url}\n{lab}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SignedHead:
    """The newest signed (seq, hash) of a chain, kept outside the lab."""

    lab: str
    seq: int
    hash: str
    genesis: str
    """The hash of the chain's record 1: the same chain found again after the lab moved."""
    at: float
    key_id: str
    mac: str
    path: Path


_SLOT = 4096
"""A head file holds two page-sized slots written in turn, so a write torn by a crash
spoils only the newer one: rewriting in place costs microseconds where write-and-rename
costs a few hundred (on every append)."""


def _read_head(path: Path) -> SignedHead | None:
    """The newest head in the file at `path` (its signature unchecked), None if none."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(2 * _SLOT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: unreadable signed audit head ({exc.strerror}).") from None
    return _newest(raw, path)


def _newest(raw: bytes, path: Path) -> SignedHead | None:
    found = _slots(raw, path)
    return max(found.values(), key=lambda h: h.seq) if found else None


def _slots(raw: bytes, path: Path) -> dict[int, SignedHead]:
    """The readable heads of a head file's slots, by slot."""
    heads = {}
    for index in (0, 1):
        try:
            data = json.loads(raw[index * _SLOT : (index + 1) * _SLOT].split(b"\n", 1)[0])
            heads[index] = SignedHead(
                str(data["lab"]), int(data["seq"]), str(data["hash"]), str(data["genesis"]),
                float(data["at"]), str(data["key_id"]), str(data["mac"]), path,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            continue  # empty, or torn by a crash mid-write: the other slot holds the head
    return heads


def find_head(key: AuditKey, store_url: str, lab: str, genesis: str | None) -> SignedHead | None:
    """This chain's signed head: by its name, else (a moved lab) by its first record."""
    head = _read_head(key.heads / f"{chain_name(store_url, lab)}.head")
    if head is not None or genesis is None or not key.heads.is_dir():
        return head
    for path in sorted(key.heads.glob("*.head")):
        with contextlib.suppress(UserError):
            other = _read_head(path)
            if other is not None and other.genesis == genesis and other.lab == lab:
                return other
    return None


# -- writing -----------------------------------------------------------------------------------


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
                _text(e.kind),
                _text(e.actor),
                _text(e.subject),
                _text(canonical(dict(e.payload or {}))),
                None if e.correlation is None else _text(e.correlation),
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
        signed = _read_head(self.head_path)
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
            slots = _slots(os.pread(fd, 2 * _SLOT, 0), self.head_path)
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
            line = (json.dumps(data) + "\n").encode()[:_SLOT]
            os.pwrite(fd, line.ljust(_SLOT, b"\0"), (1 - newer) * _SLOT)  # the older slot
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


# -- checking ----------------------------------------------------------------------------------


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
            if _hash_of(r) != r.hash:
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
        if other >= 1 and _hash_of(r, other) == r.hash:
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


def export_jsonl(
    store: Store, lab: str, write: Callable[[str], Any], *, page_size: int = 1000
) -> int:
    """Write every record of `lab`'s chain as one canonical JSON line (with its hash),
    page by page (constant memory); returns how many."""
    after = count = 0
    while True:
        page = store.audit_records(lab, after=after, limit=page_size)
        if not page:
            return count
        write(
            "".join(
                f'{{"actor":{encode_basestring(r.actor)},"at":{r.at!r},'
                f'"correlation":{_null(r.correlation)},"hash":{encode_basestring(r.hash)},'
                f'"kind":{encode_basestring(r.kind)},"lab":{encode_basestring(r.lab)},'
                f'"payload":{r.payload},"prev":{encode_basestring(r.prev_hash)},"seq":{r.seq},'
                f'"subject":{encode_basestring(r.subject)}}}\n'
                for r in page
            )
        )
        count += len(page)
        after = page[-1].seq
