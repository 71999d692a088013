"""Rows read into records: each table's row as the frozen record the Store returns.

Knows nothing about queries; `sql`, `reads` and `governance` select rows and hand them
here: a SQLAlchemy row or `direct`'s, read by column name. Imports no driver.
"""

from __future__ import annotations

import json
from typing import Any

from overnight.records import (
    AgentRecord,
    Approval,
    AuditRecord,
    Event,
    Run,
    Trial,
    TrialStatus,
)

Row = Any
"""A row whose columns read as attributes (`row.id`)."""


def event(r: Row) -> Event:
    return Event(int(r.id), r.run_id, float(r.at), r.kind, r.agent, r.trial, json.loads(r.payload))


def audit(r: Row) -> AuditRecord:
    return AuditRecord(
        r.lab, int(r.seq), float(r.at), r.kind, r.actor, r.subject, r.payload, r.correlation,
        r.prev_hash, r.hash,
    )  # fmt: skip


def approval(r: Row) -> Approval:
    return Approval(
        id=r.id,
        lab=r.lab,
        run_id=r.run_id,
        agent=r.agent,
        action=json.loads(r.action),
        reason=r.reason,
        risk=r.risk,
        correlation=r.correlation,
        created_at=float(r.created_at),
        expires_at=float(r.expires_at),
        status=r.status,
        answered_by=r.answered_by,
        note=r.note,
        answered_at=None if r.answered_at is None else float(r.answered_at),
    )


def run(row: Row) -> Run:
    return Run(
        id=row.id,
        lab=row.lab,
        base_commit=row.base_commit,
        protected=json.loads(row.protected),
        config=json.loads(row.config),
        created_at=float(row.created_at),
        noise_floor=json.loads(row.noise_floor) if row.noise_floor else None,
    )


def agent(row: Row) -> AgentRecord:
    return AgentRecord(
        run_id=row.run_id,
        name=row.name,
        runtime=row.runtime,
        branch=row.branch,
        worktree=row.worktree,
        best_commit=row.best_commit,
        best_metric=row.best_metric,
        best_trial=row.best_trial,
        state=row.state,
        state_since=row.state_since,
        session=row.session,
    )


def trial(row: Row) -> Trial:
    return Trial(
        id=int(row.id),
        run_id=row.run_id,
        number=int(row.number),
        agent=row.agent,
        status=TrialStatus(row.status),
        parent_commit=row.parent_commit,
        description=row.description,
        proposal=json.loads(row.proposal),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
        candidate_commit=row.candidate_commit,
        metric=row.metric,
        metrics=tuple(json.loads(row.metrics)),
        diff=row.diff,
        reason=row.reason,
        log_path=row.log_path,
        log_tail=row.log_tail,
        pid=row.pid,
        requeued_from=row.requeued_from,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        holdout_metric=row.holdout_metric,
        flag=row.flag,
        recorded=json.loads(row.recorded),
        memory_gb=row.memory_gb,
        peak_rss_mb=row.peak_rss_mb,
    )
