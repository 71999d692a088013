"""The notifications' rows: what overnight.notify told each sink, and the notifier's cursor.

Owns the SQL of `ov_notifications` and `ov_notify_cursors`, mixed into `SqlStore`
(which supplies the engine and its locks). The contract is `Store`'s (base.py):
notices are added with the cursor's move in one transaction, so a notifier that
restarts neither repeats nor skips an event. Titles, texts, answers and errors are
redacted before they are stored; a sink's address never reaches this table (its
name does).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row

from overnight import redaction
from overnight.records import Notice, Notification, NotificationStatus
from overnight.store.engine import SqlBase

_NOTIFY_LOCK = 727103
_COLUMNS = (
    "id, lab, run_id, sink, kind, title, text, link, event_id, status, tries, answer, error,"
    " message, created_at, updated_at"
)


def _redacted(value: str | None) -> str | None:
    return None if value is None else redaction.redact(value)


class NotificationRows(SqlBase):
    """`Store`'s notification methods over SQL."""

    def add_notifications(
        self, lab: str, notices: Sequence[Notice], *, cursor: tuple[int, int] | None = None
    ) -> list[Notification] | None:
        now = time.time()
        with self.engine.begin() as conn:
            self._lock(conn, _NOTIFY_LOCK)
            if cursor is not None:
                old, new = cursor
                row = conn.execute(
                    text("SELECT position FROM ov_notify_cursors WHERE lab = :l"), {"l": lab}
                ).first()
                if (0 if row is None else int(row.position)) != old:
                    return None
                conn.execute(
                    text(
                        "INSERT INTO ov_notify_cursors (lab, position) VALUES (:l, :p)"
                        " ON CONFLICT (lab) DO UPDATE SET position = excluded.position"
                    ),
                    {"l": lab, "p": new},
                )
            out = []
            for notice in notices:
                rid = conn.execute(
                    text(
                        "INSERT INTO ov_notifications (lab, run_id, sink, kind, title, text, link,"
                        " event_id, status, created_at) VALUES (:lab, :run, :sink, :kind,"
                        " :title, :text, :link, :event, 'queued', :at) RETURNING id"
                    ),
                    {
                        "lab": lab,
                        "run": notice.run_id,
                        "sink": notice.sink,
                        "kind": notice.kind,
                        "title": redaction.redact(notice.title),
                        "text": redaction.redact(notice.text),
                        "link": _redacted(notice.link),
                        "event": notice.event_id,
                        "at": now,
                    },
                ).scalar_one()
                out.append(Notification(int(rid), lab, notice, now))
        return out

    def notify_position(self, lab: str) -> int | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                text("SELECT position FROM ov_notify_cursors WHERE lab = :l"), {"l": lab}
            ).first()
        return None if row is None else int(row.position)

    def notifications(
        self,
        lab: str,
        *,
        sink: str | None = None,
        statuses: Iterable[NotificationStatus] | None = None,
        after: int = 0,
        limit: int = 1000,
        newest: bool = False,
    ) -> list[Notification]:
        sql = f"SELECT {_COLUMNS} FROM ov_notifications WHERE lab = :l AND id > :after"
        params: dict[str, Any] = {"l": lab, "after": after, "limit": limit}
        if sink is not None:
            sql += " AND sink = :sink"
            params["sink"] = sink
        if statuses is not None:
            names = list(statuses)
            if not names:
                return []
            params.update({f"s{i}": name for i, name in enumerate(names)})
            sql += f" AND status IN ({', '.join(f':s{i}' for i in range(len(names)))})"
        sql += " ORDER BY id DESC LIMIT :limit" if newest else " ORDER BY id LIMIT :limit"
        with self.engine.begin() as conn:
            rows = conn.execute(text(sql), params).all()
        found = [_notification(r) for r in rows]
        return found[::-1] if newest else found

    def settle_notifications(
        self,
        ids: Sequence[int],
        status: NotificationStatus,
        *,
        tries: int,
        answer: str | None = None,
        error: str | None = None,
    ) -> None:
        if not ids:
            return
        params: dict[str, Any] = {f"i{n}": i for n, i in enumerate(ids)}
        params.update(
            status=status,
            tries=tries,
            answer=_redacted(answer),
            error=_redacted(error),
            message=min(ids),
            at=time.time(),
        )
        keys = ", ".join(f":i{n}" for n in range(len(ids)))
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE ov_notifications SET status = :status, tries = :tries,"
                    " answer = :answer, error = :error, message = :message, updated_at = :at"
                    f" WHERE id IN ({keys})"
                ),
                params,
            )


def _notification(r: Row[Any]) -> Notification:
    notice = Notice(
        sink=r.sink, kind=r.kind, title=r.title, text=r.text, run_id=r.run_id, link=r.link,
        event_id=None if r.event_id is None else int(r.event_id),
    )  # fmt: skip
    return Notification(
        id=int(r.id),
        lab=r.lab,
        notice=notice,
        created_at=float(r.created_at),
        status=r.status,
        tries=int(r.tries),
        answer=r.answer,
        error=r.error,
        message=None if r.message is None else int(r.message),
        updated_at=None if r.updated_at is None else float(r.updated_at),
    )
