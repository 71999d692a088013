"""Governance's records in SQL: the hash-chained audit, and approvals.

Owns the `ov_audit`, `ov_audit_cursors`, `ov_audit_checkpoints` and `ov_approvals`
tables and the Store rules about them (one audit chain per lab, never forked; an
approval answered once). Knows nothing about how records are hashed or who answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, text

from overnight.records import Approval, ApprovalStatus, AuditCheckpoint, AuditRecord
from overnight.store import read
from overnight.store.engine import AUDIT_LOCK, SqlBase, dumps

_AUDIT_COLUMNS = "lab, seq, at, kind, actor, subject, payload, correlation, prev_hash, hash"
# built once: an audit append is on the path of every decision
_AUDIT_HEAD = text("SELECT seq, hash FROM ov_audit WHERE lab = :l ORDER BY seq DESC LIMIT 1")
_AUDIT_INSERT = text(
    f"INSERT INTO ov_audit ({_AUDIT_COLUMNS}) VALUES (:lab, :seq, :at, :kind, :actor, :subject,"
    " :payload, :correlation, :prev_hash, :hash)"
)
_CURSORS = text("SELECT source, position FROM ov_audit_cursors WHERE lab = :l")
_CURSOR_MOVE = text(
    "INSERT INTO ov_audit_cursors (lab, source, position) VALUES (:l, :s, :p)"
    " ON CONFLICT (lab, source) DO UPDATE SET position = excluded.position"
)


class GovernanceRecords(SqlBase):
    """The Store's audit and approval methods (see `overnight.store.base.Store`)."""

    # audit ------------------------------------------------------------------

    def append_audit(
        self,
        lab: str,
        build: Callable[[int, str], Sequence[AuditRecord]],
        *,
        cursors: Mapping[str, tuple[int, int]] | None = None,
    ) -> list[AuditRecord] | None:
        with self.engine.begin() as conn:
            self._lock(conn, AUDIT_LOCK)
            if cursors:
                stored = {r.source: int(r.position) for r in conn.execute(_CURSORS, {"l": lab})}
                if any(stored.get(src, 0) != old for src, (old, _new) in cursors.items()):
                    return None
            head = conn.execute(_AUDIT_HEAD, {"l": lab}).first()
            seq, last = (int(head.seq), str(head.hash)) if head else (0, "")
            records = list(build(seq, last))
            for i, record in enumerate(records, start=seq + 1):
                if record.seq != i or record.lab != lab:
                    raise ValueError(f"audit record {record.seq} of {record.lab!r}: expected {i}")
            if records:
                conn.execute(_AUDIT_INSERT, [vars(r) for r in records])
            for source, (_old, new) in (cursors or {}).items():
                conn.execute(_CURSOR_MOVE, {"l": lab, "s": source, "p": new})
        return records

    def audit_records(self, lab: str, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {_AUDIT_COLUMNS} FROM ov_audit WHERE lab = :l AND seq > :after"
                    " ORDER BY seq LIMIT :limit"
                ),
                {"l": lab, "after": after, "limit": limit},
            ).all()
        return [read.audit(r) for r in rows]

    def audit_head(self, lab: str) -> AuditRecord | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    f"SELECT {_AUDIT_COLUMNS} FROM ov_audit WHERE lab = :l"
                    " ORDER BY seq DESC LIMIT 1"
                ),
                {"l": lab},
            ).first()
        return read.audit(row) if row else None

    def audit_cursors(self, lab: str) -> dict[str, int]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text("SELECT source, position FROM ov_audit_cursors WHERE lab = :l"), {"l": lab}
            ).all()
        return {r.source: int(r.position) for r in rows}

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ov_audit_checkpoints (lab, seq, hash, at, key_id, mac)"
                    " VALUES (:lab, :seq, :hash, :at, :key_id, :mac)"
                    " ON CONFLICT (lab, seq) DO NOTHING"
                ),
                vars(checkpoint),
            )

    def audit_checkpoints(self, lab: str) -> list[AuditCheckpoint]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT lab, seq, hash, at, key_id, mac FROM ov_audit_checkpoints"
                    " WHERE lab = :l ORDER BY seq"
                ),
                {"l": lab},
            ).all()
        return [
            AuditCheckpoint(r.lab, int(r.seq), r.hash, float(r.at), r.key_id, r.mac) for r in rows
        ]

    # approvals --------------------------------------------------------------

    def add_approval(self, approval: Approval) -> bool:
        with self.engine.begin() as conn:
            taken = conn.execute(
                text("SELECT 1 FROM ov_approvals WHERE id = :id"), {"id": approval.id}
            ).first()
            if taken:
                return False
            conn.execute(
                text(
                    "INSERT INTO ov_approvals (id, lab, run_id, agent, action, reason, risk,"
                    " correlation, created_at, expires_at, status) VALUES (:id, :lab, :run_id,"
                    " :agent, :action, :reason, :risk, :correlation, :created_at, :expires_at,"
                    " 'pending')"
                ),
                {
                    "id": approval.id,
                    "lab": approval.lab,
                    "run_id": approval.run_id,
                    "agent": approval.agent,
                    "action": dumps(dict(approval.action)),
                    "reason": approval.reason,
                    "risk": approval.risk,
                    "correlation": approval.correlation,
                    "created_at": approval.created_at,
                    "expires_at": approval.expires_at,
                },
            )
            self._event(
                conn,
                approval.run_id,
                "approval.requested",
                {
                    "id": approval.id,
                    "action": dict(approval.action),
                    "reason": approval.reason,
                    "risk": approval.risk,
                    "correlation": approval.correlation,
                    "expires_at": approval.expires_at,
                },
                agent=approval.agent,
                now=approval.created_at,
            )
        return True

    def get_approval(self, approval_id: str) -> Approval | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                text("SELECT * FROM ov_approvals WHERE id = :id"), {"id": approval_id}
            ).first()
        return read.approval(row) if row else None

    def approvals(
        self, lab: str, *, statuses: Iterable[ApprovalStatus] | None = None, limit: int = 1000
    ) -> list[Approval]:
        sql = "SELECT * FROM ov_approvals WHERE lab = :l"
        params: dict[str, Any] = {"l": lab, "limit": limit}
        if statuses is not None:
            names = list(statuses)
            if not names:
                return []
            params.update({f"s{i}": name for i, name in enumerate(names)})
            sql += f" AND status IN ({', '.join(f':s{i}' for i in range(len(names)))})"
        with self.engine.begin() as conn:
            rows = conn.execute(text(sql + " ORDER BY created_at, id LIMIT :limit"), params).all()
        return [read.approval(r) for r in rows]

    def answer_approval(
        self,
        approval_id: str,
        status: Literal["approved", "denied"],
        *,
        by: str,
        note: str | None,
        at: float,
    ) -> Approval | None:
        if status not in ("approved", "denied"):
            raise ValueError(f"an approval is answered approved or denied, not {status!r}")
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE ov_approvals SET status = :s, answered_by = :by, note = :note,"
                    " answered_at = :at WHERE id = :id AND status = 'pending'"
                    " AND expires_at > :at RETURNING *"
                ),
                {"s": status, "by": by, "note": note, "at": at, "id": approval_id},
            ).first()
            if row is None:
                return None
            approval = read.approval(row)
            self._approval_event(conn, approval)
        return approval

    def expire_approvals(self, lab: str, now: float) -> list[Approval]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "UPDATE ov_approvals SET status = 'expired', answered_at = expires_at"
                    " WHERE lab = :l AND status = 'pending' AND expires_at <= :now RETURNING *"
                ),
                {"l": lab, "now": now},
            ).all()
            expired = sorted((read.approval(r) for r in rows), key=lambda a: (a.expires_at, a.id))
            for approval in expired:
                self._approval_event(conn, approval)
        return expired

    def _approval_event(self, conn: Connection, approval: Approval) -> None:
        payload: dict[str, Any] = {"id": approval.id, "correlation": approval.correlation}
        if approval.status == "expired":
            payload["expires_at"] = approval.expires_at
        else:
            payload.update(by=approval.answered_by, note=approval.note)
        self._event(
            conn,
            approval.run_id,
            f"approval.{approval.status}",
            payload,
            agent=approval.agent,
            now=approval.answered_at,
        )
