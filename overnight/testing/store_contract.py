"""The Store contract as a test suite: what every Store must do, whatever keeps its bytes.

Owns the behaviour tests any implementation of `overnight.store.Store` has to pass, shipped
with overnight the way optuna ships its storage tests, so a new backend is held to the same
rules as SQLite and PostgreSQL. Knows the Store only through its abstract API: no SQL, no
backend. Needs pytest (a development dependency), which runs it.
"""

from __future__ import annotations

from overnight.records import ATTEMPT_FIELDS


def attempt_row(
    agent: str, cost: float | None, started: float, **extra: object
) -> dict[str, object]:
    """One gateway attempt as `Store.record_attempts` takes it: a priced (or, with `cost`
    None, unpriced) answer to `agent`, started at `started`, with `extra` fields changed."""
    row: dict[str, object] = {field: 0 for field in ATTEMPT_FIELDS}
    row.update(
        request_id="r", attempt=1, agent=agent, trial=None, route="fast", upstream="a",
        model="m", credential="c", client_protocol="anthropic", upstream_protocol="openai",
        stream=True, outcome="ok", status=200, error=None, started_at=started,
        latency_s=0.2, ttft_s=0.05, input_tokens=100, output_tokens=20, cost_usd=cost,
        unpriced=cost is None,
    )  # fmt: skip
    row.update(extra)
    return row
