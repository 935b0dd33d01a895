"""Pausing a batch: its running lines finish, no queued line starts until it is resumed.

A paused batch's queued lines wait in Postgres with no live message. Nothing is taken off
Redis at pause: a worker's claim skips a paused batch's lines (`llmq.job_queries.not_paused`),
so each message still on the batch lane is acked and dropped when a worker reads it, and the
sweeper and the scheduler's feeder leave them alone. Resume clears the mark and puts every
line still queued back in the backlog, for the feeder to publish as the model's queue has
room; a message left from before the pause is a duplicate, harmless because claims are
conditional. The completion window keeps running while paused: a paused batch expires.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.errors import JobStateConflict
from llmq.models import Batch, BatchStatus, Job, JobStatus

PAUSE, RESUME = "pause", "resume"


def refusal(action: str, status: str, paused: bool) -> str | None:
    """Why `action` is not allowed on a batch in this state (None: it is). Only a batch whose
    lines still run can be paused, and only a paused one resumed."""
    if status != BatchStatus.IN_PROGRESS:
        return f"a batch that is {status} cannot {action}"
    if action == PAUSE and paused:
        return "the batch is already paused"
    if action == RESUME and not paused:
        return "the batch is not paused"
    return None


def _check(action: str, batch: Batch) -> None:
    reason = refusal(action, batch.status, batch.paused_at is not None)
    if reason is not None:
        raise JobStateConflict(f"batch {batch.id}: {reason}")


def pause(session: Session, batch: Batch) -> None:
    """Mark the batch (locked by the caller) paused; from the commit on, no line is claimed."""
    _check(PAUSE, batch)
    batch.paused_at = sa.func.now()
    session.flush()


def resume(session: Session, batch: Batch) -> int:
    """Clear the mark and put every line still queued back in the backlog (the feeder
    publishes it), but a follower, which waits for its leader's answer instead
    (`llmq.jobs.dedup`); returns how many."""
    _check(RESUME, batch)
    batch.paused_at = None
    session.flush()
    return session.execute(
        sa.update(Job)
        .where(Job.batch_id == batch.id, Job.status == JobStatus.QUEUED, Job.same_as.is_(None))
        .values(in_backlog=True)
        .execution_options(synchronize_session=False)
    ).rowcount
