"""Reads of jobs: one job as a key sees it, a key's pages, what finished jobs cost, what each
model has in flight and the sweeper's candidates. Nothing here changes a job (`llmq.jobs`
does)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.errors import InvalidField, JobNotFound
from llmq.models import ACTIVE_STATUSES, FINAL_STATUSES, Batch, Job, JobStatus, LedgerEntry


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


def of_models(models: list[str] | None):
    """Jobs of these models (None: every model)."""
    return sa.true() if models is None else Job.model.in_(models)


def not_paused():
    """Not a line of a paused batch (`llmq.batches.pause`): such a line waits in Postgres,
    with no message, until its batch is resumed."""
    paused = sa.exists().where(Batch.id == Job.batch_id, Batch.paused_at.is_not(None))
    return sa.or_(Job.batch_id.is_(None), ~paused)


def unpublished_for(older_than: timedelta):
    """Queued, out of the backlog (a backlog job has no message to lose), no follower of
    another job (`llmq.jobs.dedup`: it never has a message), not paused, and neither created
    nor published within `older_than`."""
    last = sa.func.coalesce(Job.published_at, Job.created_at)
    return sa.and_(
        Job.status == JobStatus.QUEUED,
        ~Job.in_backlog,
        Job.same_as.is_(None),
        last < sa.func.now() - older_than,
        not_paused(),
    )


def _seen_by(query, job_id: uuid.UUID | str, api_key_id: uuid.UUID | None):
    """`query` narrowed to one job as a key sees it (None: any key)."""
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound(f"no job {job_id}") from None
    query = query.where(Job.id == job_uuid)
    return query if api_key_id is None else query.where(Job.api_key_id == api_key_id)


def get_job(session: Session, job_id: uuid.UUID | str, api_key_id: uuid.UUID | None) -> Job:
    """A job, as seen by a key; another key's job does not exist for it (None: any key)."""
    job = session.execute(_seen_by(sa.select(Job), job_id, api_key_id)).scalar_one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def get_job_with_cost(
    session: Session, job_id: uuid.UUID | str, api_key_id: uuid.UUID | None
) -> tuple[Job, tuple[Decimal, Decimal] | None]:
    """`get_job` and the job's (token cost, GPU cost) from its ledger row (None before it
    has one), in one query: a long-poll's answer is one round trip after the job ends."""
    query = sa.select(Job, LedgerEntry.cost_usd, LedgerEntry.gpu_cost_usd).outerjoin(
        LedgerEntry, LedgerEntry.job_id == Job.id
    )
    row = session.execute(_seen_by(query, job_id, api_key_id)).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    job, cost, gpu_cost = row
    return job, (None if cost is None else (cost, gpu_cost))


def get_jobs(session: Session, job_ids: list[str], api_key_id: uuid.UUID) -> list[Job]:
    """A key's jobs, in the order of `job_ids`; one that is not the key's is a JobNotFound."""
    wanted = [uuid.UUID(str(i)) for i in job_ids]
    rows = session.scalars(sa.select(Job).where(Job.id.in_(wanted), Job.api_key_id == api_key_id))
    by_id = {job.id: job for job in rows}
    missing = [str(i) for i in wanted if i not in by_id]
    if missing:
        raise JobNotFound(f"no job {missing[0]}")
    return [by_id[i] for i in wanted]


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
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
        created, job_id = decode_cursor(cursor)
        query = query.where(sa.tuple_(Job.created_at, Job.id) < sa.tuple_(created, job_id))
    rows = list(
        session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
        .scalars()
        .all()
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def costs(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Decimal, Decimal]]:
    """Each job's (token cost, GPU cost) from its ledger row; a job without one is absent."""
    if not job_ids:
        return {}
    rows = session.execute(
        sa.select(LedgerEntry.job_id, LedgerEntry.cost_usd, LedgerEntry.gpu_cost_usd).where(
            LedgerEntry.job_id.in_(job_ids)
        )
    )
    return {r.job_id: (r.cost_usd, r.gpu_cost_usd) for r in rows}


def stale_queued(
    session: Session,
    older_than: timedelta,
    models: list[str] | None = None,
    limit: int = 10_000,
) -> dict[str, list[uuid.UUID]]:
    """Queued jobs not published for a while, by model: candidates for a lost message."""
    rows = session.execute(
        sa.select(Job.model, Job.id)
        .where(unpublished_for(older_than), of_models(models))
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    out: dict[str, list[uuid.UUID]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r.id)
    return out


@dataclass(frozen=True)
class Activity:
    """A model's jobs in Postgres right now: how many run, how many wait in the backlog (no
    message yet), how long the oldest has waited."""

    running: int
    oldest_queued_s: float | None
    backlog: int = 0


IDLE = Activity(0, None)  # a model with nothing queued or running


def activity_by_model(session: Session, models: list[str] | None = None) -> dict[str, Activity]:
    """One grouped read for every model with queued or running jobs (others are absent).

    An age is never below zero: a job committed after this transaction began can look
    younger than `now()`. A paused batch's lines wait for no worker, nor does a follower
    (`llmq.jobs.dedup`), which waits for its leader: they do not age it."""
    rows = session.execute(
        sa.select(
            Job.model,
            sa.func.count().filter(Job.status == JobStatus.RUNNING).label("running"),
            sa.func.count().filter(Job.status == JobStatus.QUEUED, Job.in_backlog).label("backlog"),
            sa.func.extract(
                "epoch",
                sa.func.now()
                - sa.func.min(Job.created_at).filter(
                    Job.status == JobStatus.QUEUED, Job.same_as.is_(None), not_paused()
                ),
            ).label("oldest_s"),
        )
        .where(Job.status.in_(ACTIVE_STATUSES), of_models(models))
        .group_by(Job.model)
    ).all()
    return {
        r.model: Activity(
            int(r.running),
            max(0.0, float(r.oldest_s)) if r.oldest_s is not None else None,
            int(r.backlog),
        )
        for r in rows
    }


def due_work(
    session: Session, models: list[str] | None = None
) -> dict[str, list[tuple[str | None, float, int]]]:
    """Each model's unfinished work by deadline: (batch id, seconds left, estimated tokens),
    one entry per batch and per minute of `expires_at` for other jobs. Tokens are estimated as
    the job's `max_tokens` plus a quarter of its prompt's characters. A follower
    (`llmq.jobs.dedup`) needs no worker: it gets its leader's answer."""
    prompt_chars = sa.func.coalesce(
        sa.func.length(Job.prompt), sa.func.length(sa.cast(Job.messages, sa.Text)), 0
    )
    tokens = sa.func.coalesce(Job.params["max_tokens"].as_integer(), 0) + prompt_chars / 4
    due = sa.func.coalesce(Job.batch_id, "") + sa.cast(
        sa.func.date_trunc("minute", Job.expires_at), sa.Text
    )
    rows = session.execute(
        sa.select(
            Job.model,
            sa.func.min(Job.batch_id).label("batch_id"),
            sa.func.extract("epoch", sa.func.min(Job.expires_at) - sa.func.now()).label("left_s"),
            sa.func.sum(tokens).label("tokens"),
        )
        .where(Job.status.in_(ACTIVE_STATUSES), Job.expires_at.is_not(None), of_models(models))
        .where(Job.same_as.is_(None))
        .group_by(Job.model, due)
    ).all()
    out: dict[str, list[tuple[str | None, float, int]]] = {}
    for r in rows:
        out.setdefault(r.model, []).append((r.batch_id, float(r.left_s), int(r.tokens)))
    return out


def tokens_per_s_per_replica(
    session: Session, models: list[str] | None, window: timedelta
) -> dict[str, float]:
    """What one worker of each model has done lately: tokens of its jobs finished within
    `window`, over the engine time they took (a batch's time shared by its jobs)."""
    engine_s = sa.func.sum(
        sa.cast(Job.inference_ms, sa.Float) / sa.func.greatest(Job.batch_size, 1) / 1000
    )
    rows = session.execute(
        sa.select(
            LedgerEntry.model,
            sa.func.sum(LedgerEntry.prompt_tokens + LedgerEntry.completion_tokens).label("tokens"),
            engine_s.label("engine_s"),
        )
        .join(Job, Job.id == LedgerEntry.job_id)
        .where(
            LedgerEntry.created_at > sa.func.now() - window,
            Job.inference_ms.is_not(None),
            sa.true() if models is None else LedgerEntry.model.in_(models),
        )
        .group_by(LedgerEntry.model)
    ).all()
    return {r.model: float(r.tokens) / r.engine_s for r in rows if r.engine_s}
