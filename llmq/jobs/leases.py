"""A worker's hold on the jobs it runs: the claim, the lease it renews, and letting go."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from llmq.job_queries import not_paused
from llmq.models import Job, JobStatus


def claim_jobs(
    session: Session,
    job_ids: list[uuid.UUID],
    worker: str,
    lease: timedelta,
    model: str | None = None,
) -> list[Job]:
    """Move queued jobs (or running ones whose lease ran out) to running, for this worker.

    Jobs that are finished, cancelled or held by a live claim are skipped: that is what
    makes a duplicate or late message harmless. With `model`, so are jobs that moved to
    another model (a fallback) while their old message waited on this model's queue. So are
    the lines of a paused batch: their message is dropped, and resuming the batch publishes
    them again.
    """
    if not job_ids:
        return []
    now = sa.func.now()
    ids = sa.bindparam("claim_ids", job_ids, type_=ARRAY(UUID(as_uuid=True)))
    stmt = (
        sa.update(Job)
        .where(
            Job.id == sa.any_(ids),  # one statement text for every batch size
            sa.or_(
                Job.status == JobStatus.QUEUED,
                sa.and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
            ),
            sa.or_(Job.expires_at.is_(None), Job.expires_at > now),
            sa.true() if model is None else Job.model == model,
            not_paused(),
        )
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            started_at=now,
            worker=worker,
            lease_expires_at=now + lease,
            queue_ms=sa.cast(sa.extract("epoch", now - Job.created_at) * 1000, sa.Integer),
        )
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).scalars().all())


def renew_leases(
    session: Session, claims: list[tuple[uuid.UUID, int]], worker: str, lease: timedelta
) -> list[uuid.UUID]:
    """Extend the leases of the claims a live worker still runs: one UPDATE for all of them.

    Fenced by attempt, so a worker whose claim moved on (requeued, taken by another worker)
    never extends the new holder's lease. Returns the ids whose lease was extended.
    """
    if not claims:
        return []
    rows = session.execute(
        sa.update(Job)
        .where(
            sa.tuple_(Job.id, Job.attempts).in_(claims),
            Job.worker == worker,
            Job.status == JobStatus.RUNNING,
        )
        .values(lease_expires_at=sa.func.now() + lease)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [r.id for r in rows]


def end_leases(session: Session, worker: str) -> int:
    """Let the leases of a worker known to be dead (its process was reaped) run out now, so
    the next sweep puts its jobs back without waiting. Returns how many jobs it held."""
    result = session.execute(
        sa.update(Job)
        .where(Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=sa.func.now())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def release_jobs(session: Session, claims: list[tuple[uuid.UUID, int]]) -> None:
    """Put claimed jobs back to queued (a batch broke before writing); fenced by attempt."""
    for job_id, attempt in claims:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.attempts == attempt, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.QUEUED, lease_expires_at=None, worker=None)
        )
