"""A client's moves: submit creates jobs (one INSERT, or many in one COPY), cancel ends one.

A job the exact cache answers (`NewJob.answer`) is created final, succeeded, and gets its
ledger row and webhook outbox row in the same transaction (`record_answers`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import outbox
from llmq.cache import Answer
from llmq.errors import JobStateConflict
from llmq.generation import GenerationParams
from llmq.job_queries import get_job
from llmq.models import ACTIVE_STATUSES, Job, JobStatus, LedgerEntry


@dataclass
class NewJob:
    model: str
    params: GenerationParams  # a plain dict is read as one (see `llmq.models.ParamsJSON`)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    priority: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    user: str | None = None  # the end user the client names (OpenAI's `user`)
    expires_at: datetime | None = None
    reserved_tokens: int | None = None
    reserved_cost_usd: Decimal | None = None
    batch_id: str | None = None  # a batch's job: its batch and its line's `custom_id`
    custom_id: str | None = None
    alias: str | None = None  # the alias the client named, and the variant it picked
    variant: str | None = None
    cache_key: str | None = None  # where a worker stores its answer (None: not cached)
    cache_similarity: float | None = None  # a semantic cache hit's similarity
    answer: Answer | None = None  # the exact cache's answer: the job is created succeeded,
    finished_at: datetime | None = None  # at this time (its ledger row's time too)
    hops: list[dict[str, Any]] = field(default_factory=list)  # routed away at submit
    in_backlog: bool = False  # held in Postgres for the feeder rather than published now
    dedup_key: str | None = None  # a determined batch line: equal lines run once


def _row(job_id: uuid.UUID, api_key_id: uuid.UUID, new: NewJob) -> dict[str, Any]:
    """A new job's row: the one mapping from `NewJob` to the `jobs` table."""
    answer = new.answer
    return {
        "id": job_id,
        "api_key_id": api_key_id,
        "model": new.model,
        "status": JobStatus.SUCCEEDED if answer else JobStatus.QUEUED,
        "prompt": new.prompt,
        "messages": new.messages,
        "params": new.params,
        "priority": new.priority,
        "meta": new.metadata,
        "webhook_url": new.webhook_url,
        "user": new.user,
        "expires_at": new.expires_at,
        "reserved_tokens": new.reserved_tokens,
        "reserved_cost_usd": new.reserved_cost_usd,
        "batch_id": new.batch_id,
        "custom_id": new.custom_id,
        "alias": new.alias,
        "variant": new.variant,
        "cache_key": new.cache_key,
        "cache_similarity": new.cache_similarity,
        "cached": answer is not None,
        "output_text": answer.text if answer else None,
        "finish_reason": answer.finish_reason if answer else None,
        "prompt_tokens": answer.prompt_tokens if answer else None,
        "completion_tokens": answer.completion_tokens if answer else None,
        "finished_at": new.finished_at if answer else None,
        "hops": new.hops,
        "in_backlog": new.in_backlog,
        "dedup_key": new.dedup_key,
    }


def record_answers(
    session: Session, api_key_id: uuid.UUID, ids: list[uuid.UUID], new_jobs: list[NewJob]
) -> list[uuid.UUID]:
    """The ledger and webhook outbox rows of the jobs the cache answered, which were created
    final; returns their ids. The ledger charges what submit reserved for them: the answer's
    tokens at the model's cache-hit price."""
    answered = [(i, new) for i, new in zip(ids, new_jobs, strict=True) if new.answer]
    if not answered:
        return []
    session.add_all(
        LedgerEntry(
            job_id=job_id,
            api_key_id=api_key_id,
            model=new.model,
            alias=new.alias,
            variant=new.variant,
            prompt_tokens=new.answer.prompt_tokens,
            completion_tokens=new.answer.completion_tokens,
            cost_usd=new.reserved_cost_usd or Decimal(0),
            gpu_cost_usd=Decimal(0),
            cached=True,
            created_at=new.finished_at or datetime.now(UTC),
        )
        for job_id, new in answered
        if new.answer
    )
    session.flush()
    job_ids = [job_id for job_id, _ in answered]
    outbox.enqueue_final_events(session, job_ids)
    return job_ids


# Every column back under its attribute's name: the row reads like a `Job`.
_INSERT_RETURNING = sa.insert(Job.__table__).returning(
    *(column.label(attr.key) for attr in Job.__mapper__.column_attrs for column in attr.columns)
)
# The table's key of each attribute whose name differs from its column's (`meta`).
_COLUMN_KEYS = {
    attr.key: column.key
    for attr in Job.__mapper__.column_attrs
    for column in attr.columns
    if column.key != attr.key
}


def create_job(session: Session, api_key_id: uuid.UUID, new: NewJob) -> sa.Row:
    """Insert one job; the INSERT returns the whole row, server defaults included, with
    `Job`'s attribute names. A Core statement, compiled once: the ORM's unit of work would
    cost a submit a third of a millisecond more for an object nothing changes."""
    row = _row(uuid.uuid4(), api_key_id, new)
    return session.execute(
        _INSERT_RETURNING, {_COLUMN_KEYS.get(key, key): value for key, value in row.items()}
    ).one()


def create_jobs(session: Session, api_key_id: uuid.UUID, new_jobs: list[NewJob]) -> list[uuid.UUID]:
    """Insert many jobs in the caller's transaction; ids in order.

    The rows go through one COPY, several times quicker than INSERTs for a batch's
    thousands of jobs. Each value is first converted by its column's SQLAlchemy type (the
    JSONB columns, `ParamsJSON`), as an INSERT through the ORM would convert it.
    """
    ids = [uuid.uuid4() for _ in new_jobs]
    if not ids:
        return ids
    connection = session.connection()
    columns = [Job.__mapper__.columns[key] for key in _row(ids[0], api_key_id, new_jobs[0])]
    dialect = connection.dialect
    convert = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    names = ", ".join(dialect.identifier_preparer.quote(c.name) for c in columns)
    cursor = connection.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {Job.__tablename__} ({names}) FROM STDIN") as copy:
        for job_id, new in zip(ids, new_jobs, strict=True):
            values = _row(job_id, api_key_id, new).values()
            copy.write_row([f(v) if f else v for f, v in zip(convert, values, strict=True)])
    return ids


def cancel_job(session: Session, job_id: uuid.UUID | str, api_key_id: uuid.UUID) -> tuple[Job, int]:
    """Cancel a queued or running job. Returns the job and the tokens to give back to the
    key's per-minute rate (see `tokens_to_refund`).

    The row is locked before its status is read, so that status is the one the UPDATE moves
    from: a claim that commits meanwhile is seen, and of two cancels only one makes the
    transition; the other is a 409.
    """
    job = get_job(session, job_id, api_key_id)
    before = session.execute(
        sa.select(Job.status, Job.attempts).where(Job.id == job.id).with_for_update()
    ).one()
    if before.status not in ACTIVE_STATUSES:
        raise JobStateConflict(f"job {job.id} is already {before.status}")
    session.execute(
        sa.update(Job)
        .where(Job.id == job.id)
        .values(status=JobStatus.CANCELLED, finished_at=sa.func.now(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    outbox.enqueue_final_events(session, [job.id])
    session.refresh(job)
    return job, tokens_to_refund(before.status, before.attempts, job.reserved_tokens)


@dataclass(frozen=True)
class Stopped:
    """A job `cancel_batch_jobs` ended, with the tokens to give back to its key's rate."""

    id: uuid.UUID
    api_key_id: uuid.UUID
    refund_tokens: int
    running: bool = False  # a worker may still be running it: it is told to stop


_CANCEL_BATCH = sa.text(
    """
    WITH before AS (
      SELECT id, status, attempts FROM jobs
       WHERE batch_id = :batch_id AND status IN ('queued', 'running')
         FOR UPDATE
    ), cancelled AS (
      UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL,
                      error = CAST(:error AS jsonb)
        FROM before
       WHERE jobs.id = before.id
      RETURNING jobs.id, jobs.api_key_id, before.status, before.attempts, jobs.reserved_tokens
    )
    SELECT * FROM cancelled WHERE status = 'running' OR reserved_tokens IS NOT NULL
    """
)


def cancel_batch_jobs(
    session: Session, batch_id: str, error: dict[str, str] | None = None
) -> list[Stopped]:
    """Cancel every queued or running job of a batch (a batch cancelled, or past its
    window: then `error` says so on each), in one statement however many lines the batch
    has. Rows are locked as in `cancel_job`, so a job a worker finishes meanwhile keeps its
    result. Returns only the jobs someone is to be told of: those running (their worker
    stops them) and those holding a token reservation (given back). A queued line, which
    reserves nothing, ends silently: it has no stream and no webhook of its own (the batch
    has one), and a million of them would otherwise be a million announcements."""
    rows = session.execute(
        _CANCEL_BATCH, {"batch_id": batch_id, "error": json.dumps(error) if error else None}
    ).all()
    return [
        Stopped(
            r.id,
            r.api_key_id,
            tokens_to_refund(r.status, r.attempts, r.reserved_tokens),
            r.status == JobStatus.RUNNING,
        )
        for r in rows
    ]


def tokens_to_refund(status: str, attempts: int, reserved_tokens: int | None) -> int:
    """What a cancel gives back of the tokens charged at submit: all of them for a job no
    worker ever claimed, else none, because a worker that claimed the job (even one the
    sweeper has since put back in the queue) reconciles them when its batch is written."""
    return (reserved_tokens or 0) if status == JobStatus.QUEUED and attempts == 0 else 0
