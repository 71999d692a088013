"""The SQLAlchemy Store: SQLite (WAL) by default, PostgreSQL for teams.

Owns the runs, their agents, trials and events, and what the gateway meters (its
keys, attempts and spend). Built on `engine.SqlBase` (connecting, locks, writing an
event), with governance's records from `governance`; rows become records in
`read`. Plain portable SQL through SQLAlchemy Core connections; JSON kept as text
so both dialects read it the same way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, text

from overnight import redaction
from overnight.records import (
    ATTEMPT_FIELDS,
    AgentRecord,
    Event,
    ImportedTrial,
    Keep,
    Run,
    Trial,
    TrialStatus,
    UsageRow,
    can_move,
)
from overnight.store import read, reads
from overnight.store.base import TRIAL_FIELDS, Store, TransitionError
from overnight.store.costs import CostRows
from overnight.store.engine import ID_ORDER_LOCK, dumps, query, sqlalchemy_url
from overnight.store.governance import GovernanceRecords
from overnight.store.notifications import NotificationRows

if TYPE_CHECKING:
    from overnight.store.studies import StudyCopy

_JSON_FIELDS = {"proposal", "metrics", "recorded"}
_optuna_storages: dict[str, StudyCopy] = {}


def _sqlite_normal_sync(dbapi_conn: Any, _record: Any) -> None:
    """NORMAL in WAL mode survives any crash of the process; only a power cut can lose
    the last commits (of a study the store's trials can rebuild), never corrupt it."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_optuna_lock = threading.Lock()
_FLAG_AT = tuple(
    i + 2 for i, c in enumerate(ATTEMPT_FIELDS) if c in ("stream", "usage_estimated", "unpriced")
)
"""Where the flag columns are in an ov_attempts insert's values (after lab and run_id)."""
_TEXT_FIELDS = {"description", "reason", "log_tail", "diff", "flag"}
"""Trial fields that carry what agents and experiments wrote: redacted before they are
stored, as event payloads are (overnight.redaction)."""


def _redacted(value: Any) -> Any:
    return redaction.redact(value) if isinstance(value, str) else value


class SqlStore(GovernanceRecords, CostRows, NotificationRows, Store):
    """A Store over any SQLAlchemy URL we support (sqlite, postgresql): the runs, their
    agents, trials and events, and what the gateway meters; governance's records are
    `GovernanceRecords`', notifications `NotificationRows`', costs' rollups `CostRows`'."""

    # runs -----------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        lab: str,
        base_commit: str,
        protected: Mapping[str, str],
        config: Mapping[str, Any],
    ) -> Run:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ov_runs (id, lab, base_commit, protected, config, created_at)"
                    " VALUES (:id, :lab, :base, :protected, :config, :at)"
                ),
                {
                    "id": run_id,
                    "lab": lab,
                    "base": base_commit,
                    "protected": dumps(dict(protected)),
                    "config": dumps(dict(config)),
                    "at": now,
                },
            )
            self._event(conn, run_id, "run.created", {"base_commit": base_commit}, now=now)
        return Run(run_id, lab, base_commit, dict(protected), dict(config), now)

    def get_run(self, run_id: str) -> Run | None:
        with self.engine.begin() as conn:
            row = conn.execute(text("SELECT * FROM ov_runs WHERE id = :id"), {"id": run_id}).first()
        return read.run(row) if row else None

    def latest_run(self, lab: str) -> Run | None:
        with self.engine.begin() as conn:
            return reads.latest_run(query(conn), lab)

    def labs(self) -> list[str]:
        with self.engine.begin() as conn:
            rows = conn.execute(text("SELECT DISTINCT lab FROM ov_runs ORDER BY lab")).all()
        return [str(row.lab) for row in rows]

    def set_noise_floor(self, run_id: str, floor: Mapping[str, Any]) -> Run:
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE ov_runs SET noise_floor = :f WHERE id = :id"),
                {"f": dumps(dict(floor)), "id": run_id},
            )
            self._event(conn, run_id, "lab.noise_floor", dict(floor))
            row = conn.execute(text("SELECT * FROM ov_runs WHERE id = :id"), {"id": run_id}).one()
        return read.run(row)

    # agents ---------------------------------------------------------------

    def put_agent(self, agent: AgentRecord) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM ov_agents WHERE run_id = :r AND name = :n"),
                {"r": agent.run_id, "n": agent.name},
            ).first()
            if exists:
                return
            conn.execute(
                text(
                    "INSERT INTO ov_agents (run_id, name, runtime, branch, worktree, best_commit,"
                    " best_metric, best_trial, state, state_since)"
                    " VALUES (:r, :n, :rt, :b, :w, :bc, :bm, :bt, :s, :t)"
                ),
                {
                    "r": agent.run_id,
                    "n": agent.name,
                    "rt": agent.runtime,
                    "b": agent.branch,
                    "w": agent.worktree,
                    "bc": agent.best_commit,
                    "bm": agent.best_metric,
                    "bt": agent.best_trial,
                    "s": agent.state,
                    "t": time.time(),
                },
            )

    def agents(self, run_id: str) -> list[AgentRecord]:
        with self.engine.begin() as conn:
            return reads.agents(query(conn), run_id)

    def set_agent_best(
        self,
        run_id: str,
        agent: str,
        commit: str,
        metric: float | None,
        trial: int | None,
        *,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> Event | None:
        with self.engine.begin() as conn:
            self._set_best(conn, run_id, agent, commit, metric, trial)
            if event is None:
                return None
            kind, payload = event
            return self._event(conn, run_id, kind, dict(payload), agent=agent, trial=trial)

    def set_agent_state(self, run_id: str, agent: str, state: str, **detail: Any) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE ov_agents SET state = :s, state_since = :t"
                    " WHERE run_id = :r AND name = :n"
                ),
                {"s": state, "t": now, "r": run_id, "n": agent},
            )
            self._event(
                conn, run_id, "agent.state", {"state": state, **detail}, agent=agent, now=now
            )

    def set_agent_session(self, run_id: str, agent: str, session: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE ov_agents SET session = :s WHERE run_id = :r AND name = :n"),
                {"s": session, "r": run_id, "n": agent},
            )

    def _set_best(
        self,
        conn: Connection,
        run_id: str,
        agent: str,
        commit: str,
        metric: float | None,
        trial: int | None,
    ) -> None:
        conn.execute(
            text(
                "UPDATE ov_agents SET best_commit = :c, best_metric = :m, best_trial = :t"
                " WHERE run_id = :r AND name = :n"
            ),
            {"c": commit, "m": metric, "t": trial, "r": run_id, "n": agent},
        )

    # trials ---------------------------------------------------------------

    def add_trial(
        self,
        run_id: str,
        agent: str,
        parent_commit: str,
        description: str,
        proposal: Mapping[str, Any],
        requeued_from: int | None = None,
    ) -> Trial:
        now = time.time()
        with self.engine.begin() as conn:
            number = conn.execute(
                text(
                    "UPDATE ov_runs SET trial_seq = trial_seq + 1 WHERE id = :r RETURNING trial_seq"
                ),
                {"r": run_id},
            ).scalar_one()
            trial_id = conn.execute(
                text(
                    "INSERT INTO ov_trials (run_id, number, agent, status, parent_commit,"
                    " description, proposal, requeued_from, created_at, updated_at)"
                    " VALUES (:r, :num, :a, :s, :p, :d, :prop, :rq, :t, :t) RETURNING id"
                ),
                {
                    "r": run_id,
                    "num": number,
                    "a": agent,
                    "s": TrialStatus.proposed.value,
                    "p": parent_commit,
                    "d": redaction.redact(description),
                    "prop": redaction.redact(dumps(dict(proposal))),
                    "rq": requeued_from,
                    "t": now,
                },
            ).scalar_one()
            self._event(
                conn,
                run_id,
                "trial.proposed",
                {"description": description, "requeued_from": requeued_from},
                agent=agent,
                trial=number,
                now=now,
            )
            row = conn.execute(
                text("SELECT * FROM ov_trials WHERE id = :id"), {"id": trial_id}
            ).one()
        return read.trial(row)

    def update_trial(self, trial_id: int, status: TrialStatus, **fields: Any) -> Trial:
        unknown = set(fields) - TRIAL_FIELDS
        if unknown:
            raise TypeError(f"update_trial got unknown fields {sorted(unknown)}")
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(
                text("SELECT * FROM ov_trials WHERE id = :id"), {"id": trial_id}
            ).one()
            current = TrialStatus(row.status)
            same = current is status and not current.final  # a field update, not a move
            if not same and not can_move(current, status):
                raise TransitionError(f"trial {row.number}: cannot move {current} -> {status}")
            values = {
                k: redaction.redact(dumps(v))
                if k in _JSON_FIELDS
                else _redacted(v)
                if k in _TEXT_FIELDS
                else v
                for k, v in fields.items()
            }
            metric = fields.get("metric")
            if metric is not None and math.isnan(metric):
                values["metric"] = None
            values.update(status=status.value, updated_at=now)
            assignments = ", ".join(f"{k} = :{k}" for k in values)
            conn.execute(
                text(f"UPDATE ov_trials SET {assignments} WHERE id = :trial_id"),
                {**values, "trial_id": trial_id},
            )
            updated = conn.execute(
                text("SELECT * FROM ov_trials WHERE id = :id"), {"id": trial_id}
            ).one()
            trial = read.trial(updated)
            if status is TrialStatus.kept:
                assert trial.candidate_commit, "a kept trial has a candidate commit"
                self._set_best(
                    conn,
                    trial.run_id,
                    trial.agent,
                    trial.candidate_commit,
                    trial.metric,
                    trial.number,
                )
            if same:
                return trial
            payload: dict[str, Any] = {"from": current.value}
            for key in ("metric", "reason", "candidate_commit", "duration_s"):
                if key in fields:
                    payload[key] = fields[key]
            self._event(
                conn,
                trial.run_id,
                f"trial.{status.value}",
                payload,
                agent=trial.agent,
                trial=trial.number,
                now=now,
            )
        return trial

    def import_trials(self, run_id: str, trials: Sequence[ImportedTrial]) -> list[Trial]:
        for imported in trials:
            if not imported.status.final or imported.status is TrialStatus.interrupted:
                raise ValueError(
                    f"an imported trial is kept, discarded or crashed, not {imported.status}"
                )
        now = time.time()
        ids = []
        with self.engine.begin() as conn:
            for imported in trials:
                number = conn.execute(
                    text(
                        "UPDATE ov_runs SET trial_seq = trial_seq + 1 WHERE id = :r"
                        " RETURNING trial_seq"
                    ),
                    {"r": run_id},
                ).scalar_one()
                metric = imported.metric
                if metric is not None and not math.isfinite(metric):
                    metric = None
                ids.append(
                    conn.execute(
                        text(
                            "INSERT INTO ov_trials (run_id, number, agent, status, parent_commit,"
                            " candidate_commit, description, proposal, metric, metrics, diff,"
                            " memory_gb, created_at, updated_at, finished_at)"
                            " VALUES (:r, :num, :a, :s, :p, :c, :d, :prop, :m, :ms, :diff, :mem,"
                            " :t, :t, :t) RETURNING id"
                        ),
                        {
                            "r": run_id,
                            "num": number,
                            "a": imported.agent,
                            "s": imported.status.value,
                            "p": imported.parent_commit,
                            "c": imported.candidate_commit,
                            "d": redaction.redact(imported.description),
                            "prop": redaction.redact(dumps(dict(imported.proposal))),
                            "m": metric,
                            "ms": dumps([] if metric is None else [metric]),
                            "diff": _redacted(imported.diff),
                            "mem": imported.memory_gb,
                            "t": now,
                        },
                    ).scalar_one()
                )
                # the event a live view builds the row from, as a trial that ran here has
                self._event(
                    conn,
                    run_id,
                    f"trial.{imported.status.value}",
                    {
                        **dict(imported.proposal),
                        "description": imported.description,
                        "metric": metric,
                        "candidate_commit": imported.candidate_commit,
                    },
                    agent=imported.agent,
                    trial=number,
                    now=now,
                )
            rows = [
                conn.execute(text("SELECT * FROM ov_trials WHERE id = :id"), {"id": i}).one()
                for i in ids
            ]
        return [read.trial(row) for row in rows]

    def get_trial(self, trial_id: int) -> Trial:
        with self.engine.begin() as conn:
            row = conn.execute(
                text("SELECT * FROM ov_trials WHERE id = :id"), {"id": trial_id}
            ).one()
        return read.trial(row)

    def trials(
        self,
        run_id: str,
        *,
        agent: str | None = None,
        statuses: Iterable[TrialStatus] | None = None,
        last: int | None = None,
    ) -> list[Trial]:
        sql = "SELECT * FROM ov_trials WHERE run_id = :r"
        params: dict[str, Any] = {"r": run_id}
        if agent is not None:
            sql += " AND agent = :a"
            params["a"] = agent
        if statuses is not None:
            names = [TrialStatus(s).value for s in statuses]
            if not names:
                return []
            keys = []
            for i, name in enumerate(names):
                params[f"s{i}"] = name
                keys.append(f":s{i}")
            sql += f" AND status IN ({', '.join(keys)})"
        if last is not None:
            sql += " ORDER BY number DESC LIMIT :last"
            params["last"] = last
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(sql if last is not None else sql + " ORDER BY number"), params
            ).all()
        trials = [read.trial(row) for row in rows]
        return trials[::-1] if last is not None else trials

    # events ---------------------------------------------------------------

    def trial_counts(self, run_id: str) -> dict[tuple[str, TrialStatus], int]:
        with self.engine.begin() as conn:
            return reads.trial_counts(query(conn), run_id)

    def keeps(self, run_id: str) -> list[Keep]:
        with self.engine.begin() as conn:
            return reads.keeps(query(conn), run_id)

    def append_event(
        self,
        run_id: str,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        agent: str | None = None,
        trial: int | None = None,
    ) -> Event:
        with self.engine.begin() as conn:
            return self._event(conn, run_id, kind, dict(payload or {}), agent=agent, trial=trial)

    def events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int = 1000,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        if kinds is not None:
            kinds = list(kinds)
            if not kinds:
                return []
        with self.engine.begin() as conn:
            return reads.events(query(conn), run_id, after=after, limit=limit, kinds=kinds)

    def last_event(
        self, run_id: str, kinds: Iterable[str], *, agent: str | None = None, after: int = 0
    ) -> Event | None:
        kinds = list(kinds)
        if not kinds:
            return None
        with self.engine.begin() as conn:
            return reads.last_event(query(conn), run_id, kinds, agent=agent, after=after)

    def lab_events(self, lab: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT e.* FROM ov_events e JOIN ov_runs r ON r.id = e.run_id"
                    " WHERE r.lab = :l AND e.id > :after ORDER BY e.id LIMIT :limit"
                ),
                {"l": lab, "after": after, "limit": limit},
            ).all()
        return [read.event(r) for r in rows]

    # gateway --------------------------------------------------------------

    def add_key_hash(self, lab: str, agent: str, key_hash: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ov_gateway_keys (key_hash, lab, agent, created_at)"
                    " VALUES (:h, :l, :a, :t)"
                ),
                {"h": key_hash, "l": lab, "a": agent, "t": time.time()},
            )

    def key_hashes(self, lab: str) -> dict[str, str]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text("SELECT key_hash, agent FROM ov_gateway_keys WHERE lab = :l"), {"l": lab}
            ).all()
        return {r.key_hash: r.agent for r in rows}

    def record_attempt_rows(
        self, lab: str, run_id: str | None, rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        # Straight to the driver (its own placeholders): SQLAlchemy's per-row parameter
        # handling cost 2.5x the insert itself (benchmarks/gateway_overhead.py's writer).
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO ov_attempts (lab, run_id, {', '.join(ATTEMPT_FIELDS)})"
            f" VALUES ({', '.join([mark] * (len(ATTEMPT_FIELDS) + 2))})"
        )
        values: list[Sequence[Any]]
        if self._pg:
            # psycopg sends a bool as a boolean, which a BIGINT column refuses.
            values = []
            for row in rows:
                value = [lab, run_id, *row]
                for i in _FLAG_AT:
                    if value[i] is True or value[i] is False:
                        value[i] = int(value[i])
                values.append(tuple(value))
        else:
            # sqlite3 stores a bool as 0 or 1 itself. (Converting in Python, value by
            # value, cost 2.2 us a row; the insert itself is ~5.)
            values = [(lab, run_id, *row) for row in rows]
        with self.engine.begin() as conn:
            self._lock(conn, ID_ORDER_LOCK)
            conn.exec_driver_sql(sql, values)

    def attempts(
        self,
        lab: str,
        *,
        agent: str | None = None,
        trial: str | None = None,
        after: int = 0,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM ov_attempts WHERE lab = :l AND id > :after"
        params: dict[str, Any] = {"l": lab, "after": after, "limit": limit}
        if agent is not None:
            sql += " AND agent = :a"
            params["a"] = agent
        if trial is not None:
            sql += " AND trial = :t"
            params["t"] = trial
        with self.engine.begin() as conn:
            rows = conn.execute(text(sql + " ORDER BY id LIMIT :limit"), params).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            for flag in ("stream", "usage_estimated", "unpriced"):
                item[flag] = bool(item[flag])
            out.append(item)
        return out

    def usage_rows(self, run_id: str) -> list[UsageRow]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT agent, trial, started_at,"
                    " input_tokens + cache_read_tokens + cache_write_tokens + output_tokens,"
                    " cost_usd FROM ov_attempts WHERE run_id = :r ORDER BY started_at"
                ),
                {"r": run_id},
            ).all()
        return [UsageRow(r[0], r[1], float(r[2]), int(r[3]), r[4]) for r in rows]

    def spend(self, lab: str, *, agent: str | None = None, since: float | None = None) -> float:
        sql = "SELECT COALESCE(SUM(cost_usd), 0) FROM ov_attempts WHERE lab = :l"
        params: dict[str, Any] = {"l": lab}
        if agent is not None:
            sql += " AND agent = :a"
            params["a"] = agent
        if since is not None:
            sql += " AND started_at >= :since"
            params["since"] = since
        with self.engine.begin() as conn:
            return float(conn.execute(text(sql), params).scalar_one())

    # the optimizer ------------------------------------------------------------

    def optuna_storage(self) -> StudyCopy:
        # Optuna is imported by the optimizer's processes only: it takes a while.
        import optuna

        from overnight.store.studies import StudyCopy

        with _optuna_lock:
            if self.url not in _optuna_storages:
                kwargs: dict[str, Any] = {}
                if self.url.startswith("sqlite"):
                    kwargs = {"connect_args": {"timeout": 60}}
                storage = optuna.storages.RDBStorage(sqlalchemy_url(self.url), engine_kwargs=kwargs)
                if self.url.startswith("sqlite"):
                    # as the store's own connections (make_engine): the default, FULL,
                    # syncs the disk at every commit, several per ask and tell
                    event.listen(storage.engine, "connect", _sqlite_normal_sync)
                    storage.engine.dispose()  # (connections opened so far had FULL)
                _optuna_storages[self.url] = StudyCopy(storage)
            return _optuna_storages[self.url]

    def close(self) -> None:
        self.engine.dispose()
