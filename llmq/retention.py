"""Retention: a finished job's prompt, messages and output are cleared once it finished more
than `LLMQ_RETENTION_DAYS` days ago, as is the body of its webhook deliveries that are done.

The job's row stays (id, status, tokens, timings, error, metadata) with `pruned_at` set, and
so does every ledger row: usage and costs never change. Work goes in chunks of a bounded
number of jobs, one transaction each, so pruning never holds many rows or a long lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.db import session_scope
from llmq.models import BATCH_FINAL_STATUSES, FINAL_STATUSES, Batch, Job, WebhookDelivery

CHUNK_ROWS = 1000  # jobs pruned per transaction
DONE_DELIVERIES = ("delivered", "failed")


def prunable(older_than: timedelta):
    """Finished more than `older_than` ago, not pruned yet, and not a line of a batch still
    open (its output file is written from its lines when it ends)."""
    open_batch = sa.exists().where(
        Batch.id == Job.batch_id, Batch.status.not_in(BATCH_FINAL_STATUSES)
    )
    return sa.and_(
        Job.pruned_at.is_(None),
        Job.finished_at.is_not(None),
        Job.finished_at < sa.func.now() - older_than,
        Job.status.in_(FINAL_STATUSES),
        sa.or_(Job.batch_id.is_(None), ~open_batch),
    )


def prune_chunk(
    session: Session, older_than: timedelta, limit: int = CHUNK_ROWS
) -> list[uuid.UUID]:
    """Prune up to `limit` of the oldest prunable jobs in the caller's transaction; their ids.
    Rows are taken with SKIP LOCKED: a job another transaction holds waits for a later pass."""
    chosen = (
        sa.select(Job.id)
        .where(prunable(older_than))
        .order_by(Job.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(
        session.scalars(
            sa.update(Job)
            .where(Job.id.in_(chosen.scalar_subquery()))
            .values(prompt=None, messages=None, output_text=None, pruned_at=sa.func.now())
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    if ids:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.job_id.in_(ids), WebhookDelivery.status.in_(DONE_DELIVERIES))
            .values(payload=None)
            .execution_options(synchronize_session=False)
        )
    return ids


def prune(
    older_than_days: float,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Prune every job finished more than `older_than_days` days ago, a chunk per transaction;
    returns how many. `progress` hears the running total after each chunk."""
    if older_than_days <= 0:
        raise ValueError("older_than_days must be above 0")
    older_than, total = timedelta(days=older_than_days), 0
    while True:
        with session_scope() as session:
            done = len(prune_chunk(session, older_than, chunk_rows))
        total += done
        if progress is not None and done:
            progress(total)
        if done < chunk_rows:
            return total
