"""A store read through its driver alone (the standard library's sqlite3; psycopg for
PostgreSQL), without SQLAlchemy: what `overnight costs` reads, at the cost of the
driver's import rather than SQLAlchemy's, which is most of that command's time.

Owns connecting as the store's engine does (`engine.make_engine`: the same pragmas) and
one consistent read: the cost rollup folded in its own write transaction, then every
read from one snapshot. The statements and the rows' records are `reads`' (the same
as `SqlStore`'s). Reads only a store that is there and fully migrated; for anything
else (another kind of URL, no file, a schema to migrate, no driver) `open_snapshot`
says None, and the caller opens the store the usual way, which migrates it or says
what is wrong. Knows nothing about what the reads are for.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from overnight.records import AgentRecord, CostGroup, Event, Keep, Run, TrialStatus
from overnight.store import reads
from overnight.store.migrations import MIGRATIONS

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


class Snapshot:
    """One consistent read of a store, folded first; reads as a `Store` does."""

    def __init__(self, conn: Any, q: reads.Query, close: Any) -> None:
        self._conn = conn
        self._q = q
        self._close = close

    def latest_run(self, lab: str) -> Run | None:
        return reads.latest_run(self._q, lab)

    def cost_groups(self, lab: str, run_id: str | None = None) -> list[CostGroup]:
        return reads.cost_groups(self._q, lab, run_id)

    def trial_counts(self, run_id: str) -> dict[tuple[str, TrialStatus], int]:
        return reads.trial_counts(self._q, run_id)

    def keeps(self, run_id: str) -> list[Keep]:
        return reads.keeps(self._q, run_id)

    def agents(self, run_id: str) -> list[AgentRecord]:
        return reads.agents(self._q, run_id)

    def events(
        self, run_id: str, *, after: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None
    ) -> list[Event]:
        return reads.events(self._q, run_id, after=after, limit=limit, kinds=kinds)

    def last_event(
        self, run_id: str, kinds: Iterable[str], *, agent: str | None = None, after: int = 0
    ) -> Event | None:
        return reads.last_event(self._q, run_id, kinds, agent=agent, after=after)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def driver_errors() -> tuple[type[BaseException], ...]:
    """What the drivers raise for a database they cannot read (locked, gone, refused)."""
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def open_snapshot(url: str) -> Snapshot | None:
    """The store at `url` (a URL `open_store` takes), its rollup folded, opened for one
    consistent read; None when this way cannot read it (see the module's docstring)."""
    if url.startswith("sqlite:///"):
        return _sqlite(url.removeprefix("sqlite:///"))
    for scheme in ("postgres://", "postgresql://", "postgresql+psycopg://"):
        if url.startswith(scheme):
            return _postgres("postgresql://" + url.removeprefix(scheme))
    return None


def _migrated(q: reads.Query) -> bool:
    done = {row[0] for row in q("SELECT name FROM ov_migrations", {})}
    return all(name in done for name, _ in MIGRATIONS)


_ROWS: dict[tuple[str, ...], Any] = {}


def _named(cursor: Any, rows: list[tuple[Any, ...]]) -> list[Any]:
    """sqlite3's rows as SQLAlchemy's read: by index and by column name."""
    names = tuple(d[0] for d in cursor.description)
    kind: Any = _ROWS.get(names)
    if kind is None:
        kind = _ROWS[names] = namedtuple("Row", names, rename=True)
    return list(map(kind._make, rows))


def _sqlite(path: str) -> Snapshot | None:
    import sqlite3

    if "?" in path or not Path(path).is_file():
        return None
    # autocommit: the transactions below are ours, as `make_engine` takes them
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=60000",
                       "foreign_keys=ON"):  # fmt: skip
            conn.execute(f"PRAGMA {pragma}")

        def q(sql: str, params: Mapping[str, Any]) -> Sequence[Any]:
            cursor = conn.execute(sql, dict(params))
            rows = cursor.fetchall()
            return _named(cursor, rows) if rows else rows

        if not q("SELECT 1 FROM sqlite_master WHERE name = 'ov_migrations'", {}) or not _migrated(
            q
        ):
            conn.close()
            return None
        conn.execute("BEGIN IMMEDIATE")
        reads.fold(q, "sqlite")
        conn.execute("COMMIT")
        conn.execute("BEGIN")  # deferred: one snapshot from the first read to the end

        def close() -> None:
            try:
                conn.execute("COMMIT")
            finally:
                conn.close()

        return Snapshot(conn, q, close)
    except BaseException:
        conn.close()
        raise


def _postgres(conninfo: str) -> Snapshot | None:
    try:
        import psycopg
        from psycopg.rows import namedtuple_row
    except ImportError:
        return None
    conn = psycopg.connect(conninfo, row_factory=namedtuple_row)
    try:

        def q(sql: str, params: Mapping[str, Any]) -> Sequence[Any]:
            cur = conn.execute(_PARAM.sub(r"%(\1)s", sql.replace("%", "%%")), dict(params))
            return cur.fetchall() if cur.description is not None else []

        if q("SELECT to_regclass('ov_migrations')", {})[0][0] is None or not _migrated(q):
            conn.close()
            return None
        conn.rollback()
        reads.fold(q, "postgresql")
        conn.commit()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True

        def close() -> None:
            try:
                conn.commit()
            finally:
                conn.close()

        return Snapshot(conn, q, close)
    except BaseException:
        conn.close()
        raise
