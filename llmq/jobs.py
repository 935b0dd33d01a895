"""The only place job state changes: create, claim, finish, cancel, and the sweeper's moves.

A job that ends (finish, cancel) gets its webhook outbox row in the same transaction.

Every write is safe to repeat. A claim is a conditional UPDATE, so a redelivered message
never runs a finished or cancelled job again; a finish is fenced by the claim's attempt
number; the ledger row is unique per job.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from llmq import outbox
from llmq.errors import InvalidField, JobNotFound, JobStateConflict
from llmq.generation import GenerationParams
from llmq.models import FINAL_STATUSES, Job, LedgerEntry


@dataclass
class NewJob:
    model: str
    params: GenerationParams  # a plain dict is read as one (see `llmq.models.ParamsJSON`)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    priority: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    expires_at: datetime | None = None
    reserved_tokens: int | None = None
    reserved_cost_usd: Decimal | None = None


@dataclass
class Outcome:
    """What a worker learned about one claimed job."""

    job_id: uuid.UUID
    attempt: int
    succeeded: bool
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: dict[str, str] | None = None
    inference_ms: int = 0
    batch_size: int = 1
    cost_usd: Decimal = Decimal(0)
    gpu_cost_usd: Decimal = Decimal(0)


def create_job(session: Session, api_key_id: uuid.UUID, new: NewJob) -> Job:
    job = Job(
        id=uuid.uuid4(),
        api_key_id=api_key_id,
        model=new.model,
        status="queued",
        prompt=new.prompt,
        messages=new.messages,
        params=new.params,
        priority=new.priority,
        meta=new.metadata,
        webhook_url=new.webhook_url,
        expires_at=new.expires_at,
        reserved_tokens=new.reserved_tokens,
        reserved_cost_usd=new.reserved_cost_usd,
    )
    session.add(job)
    session.flush()
    return job


def create_jobs(session: Session, api_key_id: uuid.UUID, new_jobs: list[NewJob]) -> list[uuid.UUID]:
    """Insert many jobs in the caller's transaction (one multi-row INSERT); ids in order."""
    ids = [uuid.uuid4() for _ in new_jobs]
    rows = [
        {
            "id": job_id,
            "api_key_id": api_key_id,
            "model": new.model,
            "status": "queued",
            "prompt": new.prompt,
            "messages": new.messages,
            "params": new.params,
            "priority": new.priority,
            "meta": new.metadata,
            "webhook_url": new.webhook_url,
            "expires_at": new.expires_at,
            "reserved_tokens": new.reserved_tokens,
            "reserved_cost_usd": new.reserved_cost_usd,
        }
        for job_id, new in zip(ids, new_jobs, strict=True)
    ]
    if rows:
        session.execute(sa.insert(Job), rows)
    return ids


def get_job(session: Session, job_id: uuid.UUID | str, api_key_id: uuid.UUID | None) -> Job:
    """A job, as seen by a key; another key's job does not exist for it (None: any key)."""
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound(f"no job {job_id}") from None
    query = sa.select(Job).where(Job.id == job_uuid)
    if api_key_id is not None:
        query = query.where(Job.api_key_id == api_key_id)
    job = session.execute(query).scalar_one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidField("cursor", "malformed cursor") from None


def list_jobs(
    session: Session,
    api_key_id: uuid.UUID,
    *,
    status: str | None = None,
    model: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """The key's jobs, newest first; returns a page and the cursor of the next one."""
    query = sa.select(Job).where(Job.api_key_id == api_key_id)
    if status:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model == model)
    if cursor:
        created, job_id = _decode_cursor(cursor)
        query = query.where(sa.tuple_(Job.created_at, Job.id) < sa.tuple_(created, job_id))
    rows = list(
        session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
        .scalars()
        .all()
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


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
    if before.status not in ("queued", "running"):
        raise JobStateConflict(f"job {job.id} is already {before.status}")
    session.execute(
        sa.update(Job)
        .where(Job.id == job.id)
        .values(status="cancelled", finished_at=sa.func.now(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    outbox.enqueue_final_events(session, [job.id])
    session.refresh(job)
    return job, tokens_to_refund(before.status, before.attempts, job.reserved_tokens)


def tokens_to_refund(status: str, attempts: int, reserved_tokens: int | None) -> int:
    """What a cancel gives back of the tokens charged at submit: all of them for a job no
    worker ever claimed, else none, because a worker that claimed the job (even one the
    sweeper has since put back in the queue) reconciles them when its batch is written."""
    return (reserved_tokens or 0) if status == "queued" and attempts == 0 else 0


def claim_jobs(
    session: Session, job_ids: list[uuid.UUID], worker: str, lease: timedelta
) -> list[Job]:
    """Move queued jobs (or running ones whose lease ran out) to running, for this worker.

    Jobs that are finished, cancelled or held by a live claim are skipped: that is what
    makes a duplicate or late message harmless.
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
                Job.status == "queued",
                sa.and_(Job.status == "running", Job.lease_expires_at < now),
            ),
            sa.or_(Job.expires_at.is_(None), Job.expires_at > now),
        )
        .values(
            status="running",
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
            Job.status == "running",
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
        .where(Job.worker == worker, Job.status == "running")
        .values(lease_expires_at=sa.func.now())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def release_jobs(session: Session, claims: list[tuple[uuid.UUID, int]]) -> None:
    """Put claimed jobs back to queued (a batch broke before writing); fenced by attempt."""
    for job_id, attempt in claims:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
            .values(status="queued", lease_expires_at=None, worker=None)
        )


def _text(value: str | None) -> str | None:
    """Postgres text cannot hold NUL; a model can emit it (byte-level tokenizers)."""
    return value.replace("\x00", "\ufffd") if value else value


_RESULT_COLUMNS = (
    ("id", UUID(as_uuid=True)),
    ("attempt", sa.Integer),
    ("status", sa.Text),
    ("output_text", sa.Text),
    ("finish_reason", sa.Text),
    ("error", sa.Text),  # JSON text; cast to jsonb in the UPDATE
    ("prompt_tokens", sa.Integer),
    ("completion_tokens", sa.Integer),
    ("inference_ms", sa.Integer),
    ("batch_size", sa.Integer),
)


def _results_table(outcomes: list[Outcome]):
    """The batch's results as `unnest` of one array per column, so one UPDATE writes them all.

    The statement's text is the same for every batch size: SQLAlchemy compiles it once and
    Postgres can prepare it, where a VALUES list would be compiled anew for every batch.
    """
    columns: dict[str, list] = {name: [] for name, _ in _RESULT_COLUMNS}
    for out in outcomes:
        error = {k: _text(v) for k, v in out.error.items()} if out.error else None
        row = (
            out.job_id,
            out.attempt,
            "succeeded" if out.succeeded else "failed",
            _text(out.text),
            out.finish_reason,
            json.dumps(error) if error else None,
            out.prompt_tokens,
            out.completion_tokens,
            out.inference_ms,
            out.batch_size,
        )
        for name, value in zip(columns, row, strict=True):
            columns[name].append(value)
    arrays = [
        sa.bindparam(f"r_{name}", columns[name], type_=ARRAY(type_))
        for name, type_ in _RESULT_COLUMNS
    ]
    return (
        sa.func.unnest(*arrays)
        .table_valued(*(sa.column(name, type_) for name, type_ in _RESULT_COLUMNS))
        .render_derived(name="results")
    )


def finish_jobs(session: Session, outcomes: list[Outcome]) -> list[uuid.UUID]:
    """Write a batch's results, ledger rows and webhook outbox rows in the caller's transaction.

    Returns the ids whose row this call finished. A job cancelled while it ran keeps its
    status but records the tokens it used. A stale worker (the attempt moved on) writes nothing.
    The ledger row settles the job's budget reservation: once the job is final the
    reservation no longer counts, and the ledger's cost does. A constant number of statements
    per batch, whatever its size.
    """
    if not outcomes:
        return []
    results = _results_table(outcomes)
    recorded = {
        "output_text": results.c.output_text,
        "finish_reason": results.c.finish_reason,
        "error": sa.cast(results.c.error, JSONB),
        "prompt_tokens": results.c.prompt_tokens,
        "completion_tokens": results.c.completion_tokens,
        "inference_ms": results.c.inference_ms,
        "batch_size": results.c.batch_size,
        "lease_expires_at": None,
    }
    fenced = sa.and_(Job.id == results.c.id, Job.attempts == results.c.attempt)
    ended = session.execute(
        sa.update(Job)
        .where(fenced, Job.status == "running")
        .values(status=results.c.status, finished_at=sa.func.now(), **recorded)
        .returning(Job.id, Job.api_key_id, Job.model)
        .execution_options(synchronize_session=False)
    ).all()
    cancelled = session.execute(
        sa.update(Job)
        .where(fenced, Job.status == "cancelled", Job.completion_tokens.is_(None))
        .values(**recorded)
        .returning(Job.id, Job.api_key_id, Job.model)
        .execution_options(synchronize_session=False)
    ).all()
    by_id = {out.job_id: out for out in outcomes}
    rows = [*ended, *cancelled]
    if rows:
        session.execute(
            pg_insert(LedgerEntry).on_conflict_do_nothing(index_elements=["job_id"]),
            [
                {
                    "job_id": row.id,
                    "api_key_id": row.api_key_id,
                    "model": row.model,
                    "prompt_tokens": by_id[row.id].prompt_tokens,
                    "completion_tokens": by_id[row.id].completion_tokens,
                    "cost_usd": by_id[row.id].cost_usd,
                    "gpu_cost_usd": by_id[row.id].gpu_cost_usd,
                }
                for row in rows
            ],
        )
    outbox.enqueue_final_events(session, [row.id for row in ended])
    return [row.id for row in rows]


@dataclass(frozen=True)
class Moved:
    """A job the sweeper moved, with what it needs to publish its message again."""

    id: uuid.UUID
    model: str
    priority: int


def _of_models(models: list[str] | None):
    return sa.true() if models is None else Job.model.in_(models)


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
        sa.select(Job.id, Job.model, Job.priority, Job.attempts)
        .where(Job.status == "running", orphaned, _of_models(models))
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
            .values(status="queued", worker=None, lease_expires_at=None, published_at=sa.func.now())
            .execution_options(synchronize_session=False)
        )
    for r in spent:
        session.execute(
            sa.update(Job)
            .where(Job.id == r.id)
            .values(
                status="failed",
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
    return [Moved(r.id, r.model, r.priority) for r in again], [
        Moved(r.id, r.model, r.priority) for r in spent
    ]


def expire_queued(
    session: Session, models: list[str] | None = None, limit: int = 1000
) -> list[Moved]:
    """Expire queued jobs whose deadline passed before any worker took them."""
    ids = (
        sa.select(Job.id)
        .where(Job.status == "queued", Job.expires_at < sa.func.now(), _of_models(models))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids.scalar_subquery()))
        .values(
            status="expired",
            finished_at=sa.func.now(),
            error={"code": "expired", "message": "the job's deadline passed before it ran"},
        )
        .returning(Job.id, Job.model, Job.priority)
        .execution_options(synchronize_session=False)
    ).all()
    outbox.enqueue_final_events(session, [r.id for r in rows])
    return [Moved(r.id, r.model, r.priority) for r in rows]


def _unpublished_for(older_than: timedelta):
    """Queued, and neither created nor published again within `older_than`."""
    last = sa.func.coalesce(Job.published_at, Job.created_at)
    return sa.and_(Job.status == "queued", last < sa.func.now() - older_than)


def stale_queued(
    session: Session,
    older_than: timedelta,
    models: list[str] | None = None,
    limit: int = 10_000,
) -> dict[str, list[uuid.UUID]]:
    """Queued jobs not published for a while, by model: candidates for a lost message."""
    rows = session.execute(
        sa.select(Job.model, Job.id)
        .where(_unpublished_for(older_than), _of_models(models))
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    out: dict[str, list[uuid.UUID]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r.id)
    return out


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
        .where(Job.id.in_(job_ids), _unpublished_for(older_than))
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(Job)
        .where(Job.id.in_(ids.scalar_subquery()))
        .values(published_at=sa.func.now())
        .returning(Job.id, Job.model, Job.priority)
        .execution_options(synchronize_session=False)
    ).all()
    return [Moved(r.id, r.model, r.priority) for r in rows]


@dataclass(frozen=True)
class Activity:
    """A model's jobs in Postgres right now: how many run, how long the oldest has waited."""

    running: int
    oldest_queued_s: float | None


def activity_by_model(session: Session, models: list[str] | None = None) -> dict[str, Activity]:
    """One grouped read for every model with queued or running jobs (others are absent)."""
    rows = session.execute(
        sa.select(
            Job.model,
            sa.func.count().filter(Job.status == "running").label("running"),
            sa.func.extract(
                "epoch",
                sa.func.now() - sa.func.min(Job.created_at).filter(Job.status == "queued"),
            ).label("oldest_s"),
        )
        .where(Job.status.in_(("queued", "running")), _of_models(models))
        .group_by(Job.model)
    ).all()
    return {
        r.model: Activity(int(r.running), float(r.oldest_s) if r.oldest_s is not None else None)
        for r in rows
    }


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES
