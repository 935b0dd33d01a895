"""The fallback move: a job leaves its model for the next one of its chain, same row.

Nothing is charged for the attempt that failed: the job stays active (its budget reservation
and rate-limit tokens still count) and only the finish of the attempt that answers writes
the ledger row, for the model that answered. Each move appends a hop to `jobs.hops`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from llmq.jobs.sweeps import MOVED_COLUMNS, Moved
from llmq.models import Job, JobStatus


@dataclass(frozen=True)
class Hop:
    """One job to move: the attempt that failed (the fence), where to, and why."""

    job_id: uuid.UUID
    attempt: int
    to: str
    reason: str
    error: dict[str, Any] | None = None


def _text(value: str) -> Any:
    return sa.cast(sa.literal(value), sa.Text)


def _hop_record(reason: str, to: str, error: dict[str, Any] | None) -> Any:
    """`hops` with one more entry: {model (the one left), to, reason, at, error?}."""
    fields = [_text("model"), Job.model, _text("to"), _text(to), _text("reason"), _text(reason)]
    fields += [_text("at"), sa.func.now()]
    if error:
        fields += [_text("error"), sa.literal(error, type_=JSONB)]
    return Job.hops.op("||")(sa.func.jsonb_build_array(sa.func.jsonb_build_object(*fields)))


def move_failed(session: Session, hops: list[Hop]) -> list[Moved]:
    """Move running jobs whose attempt failed to their next model, queued again (published
    after the commit; `published_at` lets the sweeper publish a message that was lost).

    Fenced by attempt and status, like a finish: a stale worker or a job cancelled while it
    ran moves nowhere (the caller then finishes it as usual).
    """
    moved = []
    for hop in hops:
        row = session.execute(
            sa.update(Job)
            .where(
                Job.id == hop.job_id,
                Job.attempts == hop.attempt,
                Job.status == JobStatus.RUNNING,
            )
            .values(
                model=hop.to,
                status=JobStatus.QUEUED,
                worker=None,
                lease_expires_at=None,
                published_at=sa.func.now(),
                hops=_hop_record(hop.reason, hop.to, hop.error),
            )
            .returning(*MOVED_COLUMNS)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if row is not None:
            moved.append(Moved(row.id, row.model, row.priority, row.batch))
    return moved


def move_queued(
    session: Session,
    model: str,
    to: str,
    reason: str,
    older_than: timedelta | None = None,
    limit: int = 500,
) -> list[Moved]:
    """Move jobs still queued for `model` to `to` (its circuit opened: all of them; its queue
    waits too long: those queued longer than `older_than`). Their old messages stay behind;
    a claim on the old queue skips them (a claim takes only its own model's jobs). A follower
    stays (`llmq.jobs.dedup`): it has no message, and runs only if its leader's answer does
    not serve it. SKIP LOCKED: two sweepers never move the same job."""
    waited = sa.true() if older_than is None else Job.created_at < sa.func.now() - older_than
    ids = (
        sa.select(Job.id)
        .where(Job.model == model, Job.status == JobStatus.QUEUED, Job.same_as.is_(None), waited)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids.scalar_subquery()))
        .values(model=to, published_at=sa.func.now(), hops=_hop_record(reason, to, None))
        .returning(*MOVED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    return [Moved(r.id, r.model, r.priority, r.batch) for r in rows]
