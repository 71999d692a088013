"""The store's reads that the costs overview needs, and the cost rollup's fold, over any
connection: the one copy of their SQL.

Owns those statements and turning their rows into records. Each takes a `Query` (run
one statement with `:name` parameters, return its rows), which `SqlStore` builds on a
SQLAlchemy connection and `direct` on a DB-API one, so both read the same rows the same
way. Imports no driver and nothing of SQLAlchemy: `overnight costs` reads through here
without paying for either's import.

The rollup: attempts are folded in when costs are read, not when they are written (the
gateway's writer stays one plain insert): each read adds the attempts with an id above
the mark and moves the mark, in one transaction, so a million attempts are summed once
and then read as a few thousand rows. Attempt ids become visible in order (base.py), so
no attempt is folded twice or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from overnight.records import AgentRecord, CostGroup, Event, Keep, Run, TrialStatus
from overnight.store import read

Query = Callable[[str, Mapping[str, Any]], Sequence[Any]]
"""Run one statement (`:name` parameters) in the caller's transaction; its rows (none for
a statement that returns none), each readable by index and by column name."""

COST_LOCK = 727104
"""PostgreSQL's advisory lock on folding (SQLite's BEGIN IMMEDIATE serializes it)."""
_ALL = "*"
"""The mark's key: one mark for every lab of the database."""
_KEY = "lab, run_id, agent, route, upstream, model, hour"
_SUMS = (
    "attempts", "requests", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_usd", "unpriced",
)  # fmt: skip
# The hour, floored: SQLite's CAST truncates (a floor for these positive times), while
# PostgreSQL's rounds, so it floors first.
_HOUR = {
    "sqlite": "CAST(started_at / 3600 AS INTEGER)",
    "postgresql": "CAST(FLOOR(started_at / 3600) AS BIGINT)",
}
_FOLD = """
INSERT INTO ov_cost_rollup ({key}, {columns})
SELECT lab, COALESCE(run_id, ''), agent, route, upstream, model,
       {hour},
       COUNT(*), SUM(CASE WHEN attempt = 1 THEN 1 ELSE 0 END),
       SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),
       SUM(cache_write_tokens), SUM(COALESCE(cost_usd, 0)),
       SUM(CASE WHEN unpriced <> 0 THEN 1 ELSE 0 END)
FROM ov_attempts WHERE id > :mark AND id <= :top
GROUP BY lab, COALESCE(run_id, ''), agent, route, upstream, model, {hour}
ON CONFLICT ({key}) DO UPDATE SET {sums}
"""


def fold(q: Query, dialect: str) -> None:
    """Fold in every lab's new attempts: by id range alone, which the primary key answers at
    once (a lab's index would be scanned whole). In a transaction that writes."""
    if dialect == "postgresql":
        q("SELECT pg_advisory_xact_lock(:k)", {"k": COST_LOCK})
    rows = q("SELECT last_attempt FROM ov_cost_marks WHERE lab = :l", {"l": _ALL})
    mark = rows[0][0] if rows else None
    top = q("SELECT MAX(id) FROM ov_attempts WHERE id > :m", {"m": mark or 0})[0][0]
    if top is None:
        return
    sql = _FOLD.format(
        key=_KEY,
        columns=", ".join(_SUMS),
        hour=_HOUR[dialect],
        sums=", ".join(f"{c} = ov_cost_rollup.{c} + excluded.{c}" for c in _SUMS),
    )
    q(sql, {"mark": mark or 0, "top": top})
    if mark is None:
        q("INSERT INTO ov_cost_marks (lab, last_attempt) VALUES (:l, :t)", {"l": _ALL, "t": top})
    else:
        q("UPDATE ov_cost_marks SET last_attempt = :t WHERE lab = :l", {"l": _ALL, "t": top})


def cost_groups(q: Query, lab: str, run_id: str | None = None) -> list[CostGroup]:
    """The rollup's rows (folded already: see `fold`)."""
    sql = f"SELECT run_id, agent, route, upstream, model, hour, {', '.join(_SUMS)}"
    sql += " FROM ov_cost_rollup WHERE lab = :l"
    params = {"l": lab}
    if run_id is not None:
        sql += " AND run_id = :r"
        params["r"] = run_id
    return [
        CostGroup(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), int(r[8]),
                  int(r[9]), int(r[10]), int(r[11]), float(r[12]), int(r[13]))
        for r in q(sql + " ORDER BY hour, agent, route", params)
    ]  # fmt: skip


def latest_run(q: Query, lab: str) -> Run | None:
    rows = q(
        "SELECT * FROM ov_runs WHERE lab = :lab ORDER BY created_at DESC LIMIT 1", {"lab": lab}
    )
    return read.run(rows[0]) if rows else None


def agents(q: Query, run_id: str) -> list[AgentRecord]:
    rows = q("SELECT * FROM ov_agents WHERE run_id = :r ORDER BY name", {"r": run_id})
    return [read.agent(row) for row in rows]


def trial_counts(q: Query, run_id: str) -> dict[tuple[str, TrialStatus], int]:
    rows = q(
        "SELECT agent, status, COUNT(*) FROM ov_trials WHERE run_id = :r GROUP BY agent, status",
        {"r": run_id},
    )
    return {(r[0], TrialStatus(r[1])): int(r[2]) for r in rows}


def keeps(q: Query, run_id: str) -> list[Keep]:
    rows = q(
        "SELECT number, agent, metric, COALESCE(finished_at, updated_at)"
        " FROM ov_trials WHERE run_id = :r AND status = 'kept' ORDER BY number",
        {"r": run_id},
    )
    return [Keep(int(r[0]), r[1], r[2], float(r[3])) for r in rows]


def events(
    q: Query, run_id: str, *, after: int, limit: int, kinds: Iterable[str] | None
) -> list[Event]:
    sql = "SELECT * FROM ov_events WHERE run_id = :r AND id > :after"
    params: dict[str, Any] = {"r": run_id, "after": after, "limit": limit}
    if kinds is not None:
        names = list(kinds)
        if not names:
            return []
        sql += " AND kind IN (" + ", ".join(f":k{i}" for i in range(len(names))) + ")"
        params.update({f"k{i}": k for i, k in enumerate(names)})
    return [read.event(r) for r in q(sql + " ORDER BY id LIMIT :limit", params)]


def last_event(
    q: Query, run_id: str, kinds: Iterable[str], *, agent: str | None, after: int
) -> Event | None:
    params: dict[str, Any] = {"r": run_id, "after": after}
    keys = []
    for i, kind in enumerate(kinds):
        params[f"k{i}"] = kind
        keys.append(f":k{i}")
    if not keys:
        return None
    sql = (
        f"SELECT * FROM ov_events WHERE run_id = :r AND id > :after AND kind IN ({', '.join(keys)})"
    )
    if agent is not None:
        sql += " AND agent = :a"
        params["a"] = agent
    rows = q(sql + " ORDER BY id DESC LIMIT 1", params)
    return read.event(rows[0]) if rows else None
