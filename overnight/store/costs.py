"""The cost rollup's rows: metered attempts summed per run, agent, route, model and hour.

Owns the SQL of `ov_cost_rollup` and `ov_cost_marks`, mixed into `SqlStore` (which
supplies the engine and its locks). Attempts are folded in when costs are read, not
when they are written (the gateway's writer stays one plain insert): each read adds
the attempts with an id above the mark and moves the mark, in one transaction,
so a million attempts are summed once and then read as a few thousand rows. Attempt
ids become visible in order (base.py), so no attempt is folded twice or skipped.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from overnight.records import CostGroup
from overnight.store.engine import SqlBase

_COST_LOCK = 727104
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


class CostRows(SqlBase):
    """`Store`'s cost methods over SQL."""

    def _fold(self, conn: Connection) -> None:
        """Fold in every lab's new attempts: by id range alone, which the primary key
        answers at once (a lab's index would be scanned whole)."""
        self._lock(conn, _COST_LOCK)
        mark = conn.execute(
            text("SELECT last_attempt FROM ov_cost_marks WHERE lab = :l"), {"l": _ALL}
        ).scalar()
        top = conn.execute(
            text("SELECT MAX(id) FROM ov_attempts WHERE id > :m"), {"m": mark or 0}
        ).scalar()
        if top is None:
            return
        fold = _FOLD.format(
            key=_KEY,
            columns=", ".join(_SUMS),
            hour=_HOUR[self.engine.dialect.name],
            sums=", ".join(f"{c} = ov_cost_rollup.{c} + excluded.{c}" for c in _SUMS),
        )
        conn.execute(text(fold), {"mark": mark or 0, "top": top})
        if mark is None:
            conn.execute(
                text("INSERT INTO ov_cost_marks (lab, last_attempt) VALUES (:l, :t)"),
                {"l": _ALL, "t": top},
            )
        else:
            conn.execute(
                text("UPDATE ov_cost_marks SET last_attempt = :t WHERE lab = :l"),
                {"l": _ALL, "t": top},
            )

    def cost_groups(self, lab: str, run_id: str | None = None) -> list[CostGroup]:
        sql = f"SELECT run_id, agent, route, upstream, model, hour, {', '.join(_SUMS)}"
        sql += " FROM ov_cost_rollup WHERE lab = :l"
        params = {"l": lab}
        if run_id is not None:
            sql += " AND run_id = :r"
            params["r"] = run_id
        with self.engine.begin() as conn:
            self._fold(conn)
            rows = conn.execute(text(sql + " ORDER BY hour, agent, route"), params).all()
        return [
            CostGroup(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), int(r[8]),
                      int(r[9]), int(r[10]), int(r[11]), float(r[12]), int(r[13]))
            for r in rows
        ]  # fmt: skip
