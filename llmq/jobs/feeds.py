"""The feeder's moves: read a model's backlog for the policy, and take the chosen jobs out of
it for publishing (`scheduler.feeder`)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.backlog import Candidate
from llmq.job_queries import not_paused
from llmq.jobs.sweeps import MOVED_COLUMNS, Moved
from llmq.models import Job, JobStatus

IN_BACKLOG = sa.and_(Job.status == JobStatus.QUEUED, Job.in_backlog)


def backlog_candidates(session: Session, model: str, per_key: int) -> list[Candidate]:
    """Each key's next `per_key` backlog jobs of the model, locked (SKIP LOCKED, so a second
    feeder racing this one takes other rows) until the caller's transaction ends.

    The keys come from a loose index scan of `ix_jobs_backlog` (one probe per key, not a
    pass over the backlog), and each key's jobs from the same index, in the policy's order.
    """
    keys = sa.text(
        """
        WITH RECURSIVE keys AS (
          (SELECT api_key_id FROM jobs
            WHERE model = :model AND status = 'queued' AND in_backlog
            ORDER BY api_key_id LIMIT 1)
          UNION ALL
          SELECT (SELECT j.api_key_id FROM jobs j
                   WHERE j.model = :model AND j.status = 'queued' AND j.in_backlog
                     AND j.api_key_id > keys.api_key_id
                   ORDER BY j.api_key_id LIMIT 1)
            FROM keys WHERE keys.api_key_id IS NOT NULL
        )
        SELECT api_key_id FROM keys WHERE api_key_id IS NOT NULL
        """
    )
    out = []
    for key_id in session.scalars(keys, {"model": model}).all():
        # Interactive jobs (their own small index) and batch lines apart: the policy puts
        # the first before the second at each priority.
        for lane in (Job.batch_id.is_(None), Job.batch_id.is_not(None)):
            rows = session.execute(
                sa.select(Job.id, Job.priority, Job.expires_at, Job.created_at, Job.batch_id)
                .where(Job.model == model, Job.api_key_id == key_id, IN_BACKLOG, lane)
                .where(not_paused())
                .order_by(Job.priority.desc(), Job.expires_at, Job.created_at)
                .limit(per_key)
                .with_for_update(skip_locked=True)
            ).all()
            out += [Candidate(r[0], key_id, r[1], r[2], r[3], r[4] is not None) for r in rows]
    return out


def take_from_backlog(session: Session, job_ids: list[uuid.UUID]) -> list[Moved]:
    """Mark the jobs published (out of the backlog, `published_at` now) in the caller's
    transaction; their messages go out after it commits. A job cancelled or expired since it
    was read is not taken."""
    if not job_ids:
        return []
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(job_ids), IN_BACKLOG)
        .values(in_backlog=False, published_at=sa.func.now())
        .returning(*MOVED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    by_id = {r.id: Moved(r.id, r.model, r.priority, r.batch) for r in rows}
    return [by_id[i] for i in job_ids if i in by_id]  # in the policy's order
