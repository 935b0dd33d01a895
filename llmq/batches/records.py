"""Batch rows: created with their jobs in one transaction, read with their counts and usage,
listed by key, cancelled. No HTTP: the API's routes and the sweeper call these."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import admission, budgets, jobs, outbox
from llmq.batches.validate import Checked
from llmq.errors import BatchNotFound, InvalidField, JobStateConflict
from llmq.keys import Caller
from llmq.models import Batch, BatchStatus, Job, JobStatus, LedgerEntry

OPEN = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def create_batch(
    session: Session,
    caller: Caller,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    window_s: int,
    metadata: dict[str, str] | None,
    checked: Checked,
    new_jobs: list[jobs.NewJob],
) -> tuple[Batch, list[uuid.UUID]]:
    """The batch row and its jobs (`new_jobs`, one per accepted line, in order), or a failed
    batch with the file's line errors and no job. The key's budget is checked for every job
    together, under the key's lock, before anything is written. A failed batch's webhook
    event is written with it (`outbox.created_in`)."""
    now = datetime.now(UTC)
    batch = Batch(
        id=new_batch_id(), api_key_id=caller.key_id, endpoint=endpoint,
        input_file_id=input_file_id, completion_window=completion_window,
        expires_at=now + timedelta(seconds=window_s), meta=metadata,
        refused=[r.as_dict() for r in checked.refused],
        total=len(checked.accepted) + len(checked.refused),
    )  # fmt: skip
    if checked.broken:
        batch.status, batch.failed_at, batch.total = BatchStatus.FAILED, now, 0
        batch.errors = [e.as_dict() for e in checked.errors]
        batch.refused = []
        session.add(batch)
        session.flush()
        outbox.enqueue_batch_event(session, batch.id)
        return batch, []
    batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, now
    budgets.lock_key(session, caller.key_id)
    admission.check_budget(session, caller, new_jobs)
    session.add(batch)
    session.flush()
    for new, line in zip(new_jobs, checked.accepted, strict=True):
        new.batch_id, new.custom_id = batch.id, line.custom_id
    return batch, jobs.create_jobs(session, caller.key_id, new_jobs)


def get_batch(session: Session, batch_id: str, key_id: uuid.UUID, lock: bool = False) -> Batch:
    """The key's batch; another key's is not found, like a missing one."""
    query = sa.select(Batch).where(Batch.id == batch_id, Batch.api_key_id == key_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise BatchNotFound(batch_id)
    return row


def list_batches(
    session: Session, key_id: uuid.UUID, after: str | None, limit: int
) -> tuple[list[Batch], bool]:
    """One page of the key's batches, newest first, after the batch `after`."""
    query = sa.select(Batch).where(Batch.api_key_id == key_id)
    if after is not None:
        cursor = session.get(Batch, after)
        if cursor is None or cursor.api_key_id != key_id:
            raise InvalidField("after", "no such batch")
        mark = sa.tuple_(sa.literal(cursor.created_at), sa.literal(cursor.id))
        query = query.where(sa.tuple_(Batch.created_at, Batch.id) < mark)
    query = query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


@dataclass(frozen=True)
class Progress:
    completed: int  # jobs that succeeded
    failed: int  # refused lines, and jobs that ended otherwise
    active: int  # jobs still queued or running
    input_tokens: int  # from the ledger
    output_tokens: int


def progress(session: Session, batch: Batch) -> Progress:
    """Counts from the batch's jobs and token totals from its ledger rows, in one statement."""
    status = Job.status
    row = session.execute(
        sa.select(
            sa.func.count().filter(status == JobStatus.SUCCEEDED),
            sa.func.count().filter(status.in_(("queued", "running"))),
            sa.func.count(),
        ).where(Job.batch_id == batch.id)
    ).one()
    tokens = session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(LedgerEntry.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(LedgerEntry.completion_tokens), 0),
        )
        .join(Job, Job.id == LedgerEntry.job_id)
        .where(Job.batch_id == batch.id)
    ).one()
    succeeded, active, total = row
    failed = total - succeeded - active + len(batch.refused or [])
    return Progress(succeeded, failed, active, int(tokens[0]), int(tokens[1]))


def start_cancel(session: Session, batch: Batch, error: dict[str, str] | None = None):
    """Move an open batch to `cancelling` (or mark it expired) and cancel its jobs that are
    still queued or running; returns them (`jobs.Stopped`). The batch is finalized once its
    last job ends."""
    if batch.status not in OPEN:
        raise JobStateConflict(f"batch {batch.id} is already {batch.status}")
    if error is not None:
        batch.expired_at = batch.expired_at or sa.func.now()
    elif batch.status == BatchStatus.IN_PROGRESS:
        batch.status, batch.cancelling_at = BatchStatus.CANCELLING, sa.func.now()
    session.flush()
    return jobs.cancel_batch_jobs(session, batch.id, error)


def batch_object(batch: Batch, counts: Progress | None) -> dict[str, Any]:
    """OpenAI's batch object."""

    def at(value: datetime | None) -> int | None:
        return int(value.timestamp()) if value is not None else None

    errors = {"object": "list", "data": batch.errors} if batch.errors else None
    usage = None
    if counts is not None:
        usage = {
            "input_tokens": counts.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts.input_tokens + counts.output_tokens,
        }
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
        "status": batch.status, "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id, "created_at": at(batch.created_at),
        "in_progress_at": at(batch.in_progress_at), "expires_at": at(batch.expires_at),
        "finalizing_at": at(batch.finalizing_at), "completed_at": at(batch.completed_at),
        "failed_at": at(batch.failed_at), "expired_at": at(batch.expired_at),
        "cancelling_at": at(batch.cancelling_at), "cancelled_at": at(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": counts.completed if counts else 0,
            "failed": counts.failed if counts else 0,
        },
        "metadata": batch.meta, "usage": usage,
    }  # fmt: skip
