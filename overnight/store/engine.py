"""What every part of the SQL store shares: its engine, its locks, and writing an event.

Owns connecting (the URLs users write, our drivers, SQLite's pragmas, PostgreSQL's
pool), migrating on open, the PostgreSQL advisory locks the store's rules rest on,
and `SqlBase._event`, the one way an event is written, inside the transaction of
the change it announces. `SqlStore` (`sql`) is built on it, with the governance
records (`governance`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url, text
from sqlalchemy.pool import NullPool

from overnight import redaction
from overnight.errors import UserError
from overnight.records import Event
from overnight.store.migrations import migrate
from overnight.store.reads import Query

# PostgreSQL advisory locks (SQLite needs none: BEGIN IMMEDIATE serializes every writer).
MIGRATE_LOCK = 727100
AUDIT_LOCK = 727101
# Taken before an event or attempt id is drawn and held to commit, so ids commit in id
# order: a sequence hands out ids at once, but concurrent transactions commit in any order,
# and a follower that remembered id 11 would never see a late-committing id 10.
ID_ORDER_LOCK = 727102


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sqlalchemy_url(url: str) -> str:
    """Accept the URLs users write (`postgresql://`) and pick our drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def query(conn: Connection) -> Query:
    """`reads`' way to run a statement, on a SQLAlchemy connection."""

    def run(sql: str, params: Mapping[str, Any]) -> Sequence[Any]:
        result = conn.execute(text(sql), dict(params))
        return result.all() if result.returns_rows else []

    return run


def make_engine(url: str) -> Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the driver so BEGIN IMMEDIATE below is ours.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives any crash of the process (kill -9); only
            # a power cut can lose the last commits, never corrupt the file.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the lock up front: no deadlocked read-to-write upgrades.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    return create_engine(url, poolclass=NullPool)


def shown_url(url: str) -> str:
    """`url` as it may be printed: its password, if any, as ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):  # (one it cannot read: hide what looks like one)
        return re.sub(r"(//[^/:@]*:)[^@]*@", r"\1***@", url)


def _unusable(url: str, why: str) -> UserError:
    return UserError(
        f"the store's URL {shown_url(url)!r} cannot be used: {why}.\n"
        "  fix: set OVERNIGHT_DB to a postgresql://USER@HOST/DB (or sqlite:///PATH) URL, or "
        "unset it to keep the lab's store in .overnight/."
    )


def _unreachable(url: str, error: exc.DBAPIError) -> UserError:
    """The one-line story of a store that did not open (the driver's first line, never the
    URL's password)."""
    first = next((line.strip() for line in str(error.orig).splitlines() if line.strip()), "")
    why = redaction.redact(first) or type(error.orig).__name__
    if url.startswith("sqlite"):
        fix = (
            "check that the folder exists and is yours (overnight keeps the lab's store in "
            ".overnight/), and that no other program holds the file"
        )
    else:
        fix = (
            "start the database server or correct OVERNIGHT_DB (its host, port, user and "
            "database), or unset OVERNIGHT_DB to keep the lab's store in .overnight/"
        )
    return UserError(f"the store at {shown_url(url)} could not be opened: {why}\n  fix: {fix}.")


class SqlBase:
    """A migrated database over any SQLAlchemy URL we support (sqlite, postgresql)."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = sqlalchemy_url(url).partition(":")[0]
        if scheme not in ("sqlite", "postgresql+psycopg"):
            raise _unusable(url, "overnight keeps its store in SQLite or PostgreSQL")
        try:
            self.engine = make_engine(url)
        except (exc.ArgumentError, ValueError):  # (ValueError: a port that is no number)
            raise _unusable(url, "it does not read as a database URL") from None
        self._pg = self.engine.dialect.name == "postgresql"
        try:
            with self.engine.begin() as conn:
                self._lock(conn, MIGRATE_LOCK)
                migrate(conn)
        except (exc.OperationalError, exc.InterfaceError) as error:
            self.engine.dispose()
            raise _unreachable(url, error) from None

    def _lock(self, conn: Connection, key: int) -> None:
        if self._pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def _event(
        self,
        conn: Connection,
        run_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        agent: str | None = None,
        trial: int | None = None,
        now: float | None = None,
    ) -> Event:
        at = time.time() if now is None else now
        self._lock(conn, ID_ORDER_LOCK)
        event_id = conn.execute(
            text(
                "INSERT INTO ov_events (run_id, at, kind, agent, trial, payload)"
                " VALUES (:r, :at, :k, :a, :t, :p) RETURNING id"
            ),
            {
                "r": run_id,
                "at": at,
                "k": kind,
                "a": agent,
                "t": trial,
                "p": redaction.redact(dumps(payload)),
            },
        ).scalar_one()
        return Event(int(event_id), run_id, at, kind, agent, trial, payload)
