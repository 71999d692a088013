"""The cost rollup, mixed into `SqlStore` (which supplies the engine): metered attempts
summed per run, agent, route, model and hour.

Owns reading the rollup through a SQLAlchemy connection; its SQL (`ov_cost_rollup`,
`ov_cost_marks`) and how a read folds new attempts in are `reads`'.
"""

from __future__ import annotations

from overnight.records import CostGroup
from overnight.store import reads
from overnight.store.engine import SqlBase, query


class CostRows(SqlBase):
    """`Store`'s cost methods over SQL."""

    def cost_groups(self, lab: str, run_id: str | None = None) -> list[CostGroup]:
        with self.engine.begin() as conn:
            q = query(conn)
            reads.fold(q, self.engine.dialect.name)
            return reads.cost_groups(q, lab, run_id)
