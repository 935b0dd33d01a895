"""The sweeper's moves, on jobs no one else will move: lost workers, deadlines, messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import outbox
from llmq.job_queries import of_models, unpublished_for
from llmq.models import Job, JobStatus
from llmq.queues import Message


@dataclass(frozen=True)
class Moved:
    """A job the sweeper moved, with what it needs to publish its message again."""

    id: uuid.UUID
    model: str
    priority: int
    batch: bool = False  # a batch's line: its message goes on the model's batch lane

    def message(self) -> Message:
        return Message(str(self.id), self.model, self.priority, self.batch)


MOVED_COLUMNS = (Job.id, Job.model, Job.priority, Job.batch_id.is_not(None).label("batch"))


def requeue_orphans(
    session: Session,
    max_attempts: int,
    models: list[str] | None = None,
    limit: int = 500,
) -> tuple[list[Moved], list[Moved]]:
    """Put back running jobs whose lease ran out: their worker stopped renewing it.

    The lease in Postgres is the only authority; a heartbeat missing from Redis (flushed,
    restarted, failed over) proves nothing. Returns (requeued, failed): a job that has used
    `max_attempts` claims is failed with a clear error instead, so a job that kills its
    worker does not loop forever. Rows are taken with SKIP LOCKED, so two sweepers never
    move the same job.
    """
    orphaned = Job.lease_expires_at < sa.func.now()
    rows = session.execute(
        sa.select(*MOVED_COLUMNS, Job.attempts)
        .where(Job.status == JobStatus.RUNNING, orphaned, of_models(models))
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    spent = [r for r in rows if r.attempts >= max_attempts]
    again = [r for r in rows if r.attempts < max_attempts]
    if again:
        session.execute(
            sa.update(Job)
            .where(Job.id.in_([r.id for r in again]))
            .values(
                status=JobStatus.QUEUED,
                worker=None,
                lease_expires_at=None,
                published_at=sa.func.now(),
            )
            .execution_options(synchronize_session=False)
        )
    for r in spent:
        session.execute(
            sa.update(Job)
            .where(Job.id == r.id)
            .values(
                status=JobStatus.FAILED,
                finished_at=sa.func.now(),
                lease_expires_at=None,
                error={
                    "code": "max_attempts_exceeded",
                    "message": f"the job's worker was lost on each of its {r.attempts} "
                    f"attempts (max_attempts={max_attempts}); it is not retried again",
                },
            )
            .execution_options(synchronize_session=False)
        )
    outbox.enqueue_final_events(session, [r.id for r in spent])
    return [Moved(r.id, r.model, r.priority, r.batch) for r in again], [
        Moved(r.id, r.model, r.priority, r.batch) for r in spent
    ]


def expire_queued(
    session: Session, models: list[str] | None = None, limit: int = 1000
) -> list[Moved]:
    """Expire queued jobs whose deadline passed before any worker took them."""
    ids = (
        sa.select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.expires_at < sa.func.now(), of_models(models))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids.scalar_subquery()))
        .values(
            status=JobStatus.EXPIRED,
            finished_at=sa.func.now(),
            error={"code": "expired", "message": "the job's deadline passed before it ran"},
        )
        .returning(*MOVED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    outbox.enqueue_final_events(session, [r.id for r in rows])
    return [Moved(r.id, r.model, r.priority, r.batch) for r in rows]


def mark_republished(
    session: Session, job_ids: list[uuid.UUID], older_than: timedelta
) -> list[Moved]:
    """Take the jobs whose message is lost (still queued, still stale) for publishing again.

    SKIP LOCKED plus the re-checked age means that of two sweepers racing on the same job,
    only one publishes it.
    """
    if not job_ids:
        return []
    ids = (
        sa.select(Job.id)
        .where(Job.id.in_(job_ids), unpublished_for(older_than))
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids.scalar_subquery()))
        .values(published_at=sa.func.now())
        .returning(*MOVED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    return [Moved(r.id, r.model, r.priority, r.batch) for r in rows]
