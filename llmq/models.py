"""SQLAlchemy 2 tables. Migrations in `migrations/` create exactly these."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from llmq.generation import GenerationParams


class JobStatus(StrEnum):
    """A job's status: its value is what the API shows and the `jobs.status` column holds.
    `queued -> running -> succeeded | failed`; `cancelled` and `expired` from either of the
    first two. A status only moves forward."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = tuple(s for s in JobStatus if s not in ACTIVE_STATUSES)
MONEY = Numeric(24, 12)


class Base(DeclarativeBase):
    pass


class ParamsJSON(TypeDecorator):
    """A job's `GenerationParams` as JSONB: written with every parameter, read back typed.

    A plain dict (an older caller, a row written before a parameter existed) goes through the
    same model, so the defaults come from `llmq.generation` alone.
    """

    impl = JSONB
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        params = value if isinstance(value, GenerationParams) else GenerationParams.from_row(value)
        return params.to_row()

    def process_result_value(self, value: Any, dialect: Any) -> GenerationParams | None:
        return None if value is None else GenerationParams.from_row(value)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("budget_period IN ('day','month')", name="ck_api_keys_budget_period"),
        CheckConstraint(
            "(budget_usd IS NULL) = (budget_period IS NULL)", name="ck_api_keys_budget"
        ),
        CheckConstraint("fair_share_weight > 0", name="ck_api_keys_fair_share_weight"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text, index=True)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    budget_period: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    # The key's share of a model's backlog against other keys' (`llmq.backlog`).
    fair_share_weight: Mapped[float] = mapped_column(Float, server_default=text("1"))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            f"status IN ({','.join(repr(s.value) for s in JobStatus)})", name="ck_jobs_status"
        ),
        CheckConstraint("priority BETWEEN 0 AND 9", name="ck_jobs_priority"),
        CheckConstraint(
            "prompt IS NOT NULL OR messages IS NOT NULL OR pruned_at IS NOT NULL",
            name="ck_jobs_input",
        ),
        Index("ix_jobs_key_created", "api_key_id", text("created_at DESC"), text("id DESC")),
        Index(  # a key's pages of one status: a rare one is not found by reading every job
            "ix_jobs_key_status_created",
            "api_key_id",
            "status",
            text("created_at DESC"),
            text("id DESC"),
        ),
        Index(  # the same for one model
            "ix_jobs_key_model_created",
            "api_key_id",
            "model",
            text("created_at DESC"),
            text("id DESC"),
        ),
        Index(
            "ix_jobs_active_model",
            "model",
            "status",
            postgresql_where=text("status IN ('queued','running')"),
        ),
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_jobs_queued_created", "created_at", postgresql_where=text("status = 'queued'")),
        Index(  # retention's scan (`llmq.retention`): finished jobs not pruned yet, oldest first
            "ix_jobs_prunable",
            "finished_at",
            postgresql_where=text("pruned_at IS NULL AND finished_at IS NOT NULL"),
        ),
        Index("ix_jobs_queued_expires", "expires_at", postgresql_where=text("status = 'queued'")),
        Index("ix_jobs_batch", "batch_id", "status", postgresql_where=text("batch_id IS NOT NULL")),
        Index("ix_jobs_alias", "alias", "created_at", postgresql_where=text("alias IS NOT NULL")),
        Index(  # the feeder's scan: each key's next jobs of a model, in the backlog's order
            "ix_jobs_backlog",
            "model",
            "api_key_id",
            text("priority DESC"),
            "expires_at",
            "created_at",
            postgresql_where=text("status = 'queued' AND in_backlog"),
        ),
        Index(  # the same for interactive jobs alone, which go first at each priority
            "ix_jobs_backlog_interactive",
            "model",
            "api_key_id",
            text("priority DESC"),
            "expires_at",
            "created_at",
            postgresql_where=text("status = 'queued' AND in_backlog AND batch_id IS NULL"),
        ),
        Index(  # the followers still waiting for their leader (`llmq.jobs.dedup`)
            "ix_jobs_same_as",
            "same_as",
            postgresql_where=text("status = 'queued' AND same_as IS NOT NULL"),
        ),
        # the leaders, by status: the ended ones whose followers are still to be resolved
        Index("ix_jobs_leads", "status", postgresql_where=text("leads")),
    )
    # The INSERT returns the server's defaults (created_at, attempts, ...): no second query.
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="RESTRICT")
    )
    model: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=JobStatus.QUEUED.value)
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    params: Mapped[GenerationParams] = mapped_column(ParamsJSON)
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    output_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    queue_ms: Mapped[int | None] = mapped_column(Integer)
    inference_ms: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the sweeper publishes the job's message again; the API's first publish is
    # covered by created_at.
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Queued with no message yet: the scheduler's feeder publishes it when the model's queue
    # has room (`scheduler.feeder`); the sweeper never republishes it.
    in_backlog: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'"))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str | None] = mapped_column(Text)  # the end user a client named (OpenAI's `user`)
    # What submit reserved: counted against the key's limits until the job ends.
    reserved_tokens: Mapped[int | None] = mapped_column(Integer)
    reserved_cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    # A batch's job: its batch and the `custom_id` of its input line.
    batch_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("batches.id", ondelete="RESTRICT")
    )
    custom_id: Mapped[str | None] = mapped_column(Text)
    # A job whose request named an alias: the alias and the variant (or rule) that picked
    # `model`.
    alias: Mapped[str | None] = mapped_column(Text)
    variant: Mapped[str | None] = mapped_column(Text)
    # The exact cache (`llmq.cache`): the key a determined job's answer is stored under (None:
    # the job is not cached), and whether the cache answered it at submit.
    cache_key: Mapped[str | None] = mapped_column(Text)
    # A semantic cache hit: the cosine similarity of its prompt to the one whose answer it got.
    cache_similarity: Mapped[float | None] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The models the job moved away from: [{model, to, reason, at}], oldest first.
    hops: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    # A batch line whose answer its parameters determine: equal lines of one batch share the
    # key (`llmq.batches.records.mark_duplicates`). A follower is queued but never published:
    # `same_as` names the line it waits for, whose answer it gets (`llmq.jobs.dedup`).
    dedup_key: Mapped[str | None] = mapped_column(Text)
    same_as: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # Followers wait for this job; cleared once none is left queued.
    leads: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # When retention (`llmq.retention`) cleared the job's prompt, messages and output.
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """Exactly one row per finished job that ran or the cache answered: tokens and cost."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_ledger_key_created", "api_key_id", "created_at"),
        Index("ix_ledger_model_created", "model", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY)
    gpu_cost_usd: Mapped[Decimal] = mapped_column(MONEY, server_default=text("0"))
    cached: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))  # a cache hit
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    alias: Mapped[str | None] = mapped_column(Text)  # copied from the job
    variant: Mapped[str | None] = mapped_column(Text)


class UsageDaily(Base):
    """The ledger summed by key, UTC day and model, so usage and budgets read a row a day
    whatever the number of jobs (`llmq.usage_daily`).

    Triggers on `usage_ledger` (migration 0017) keep it current in the transaction of every
    ledger write, whoever writes. Each connection adds to its own `shard` of a day, so
    concurrent writers for one key and model do not wait on one row; readers sum the shards.
    A deleted ledger row is subtracted, so a group whose `jobs` sums to 0 has no ledger rows.
    """

    __tablename__ = "usage_daily"

    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)
    cached_jobs: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY)
    gpu_cost_usd: Mapped[Decimal] = mapped_column(MONEY)


class IdempotencyKey(Base):
    """An `Idempotency-Key` seen on submit or batch create, scoped to the API key that sent it.

    A submit keeps `job_id`, the (first) job the request made; a bulk request also keeps all
    of its jobs, in order, in `job_ids`. Deleting the first job (its publish failed) frees the
    key. A batch create keeps `batch_id` instead (a failed batch has no job).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="ck_idempotency_subject"),
    )

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_sha256: Mapped[str] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    job_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(UUID(as_uuid=True)))
    batch_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """The outbox: one row per job or batch event to deliver, written with its final state."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','sending','delivered','failed')", name="ck_webhook_status"
        ),
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="ck_webhook_subject"),
        Index("ix_webhook_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # the stable `webhook-id`
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    batch_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("api_keys.id"))
    event_type: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    payload: Mapped[str | None] = mapped_column(Text)  # exact bytes sent, fixed at first attempt
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the delivery log. No response body is kept."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        Text, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class ScalingEvent(Base):
    """One row per change of a pool's size the scheduler made, and why."""

    __tablename__ = "scaling_events"
    __table_args__ = (Index("ix_scaling_events_model_created", "model", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(Text)
    from_replicas: Mapped[int] = mapped_column(Integer)
    to_replicas: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    waiting: Mapped[int] = mapped_column(Integer)
    in_flight: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class File(Base):
    """An uploaded (or written) file's metadata; its bytes live in the file store
    (`llmq.files`): `file_chunks` rows by default, or an S3-compatible bucket."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_key_created", "api_key_id", text("created_at DESC"), text("id DESC")),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # "file-<hex>"
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="RESTRICT")
    )
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FileChunk(Base):
    """One piece of a file's bytes in the Postgres file store, in order by `seq`. Keyed by
    the store's own id, not tied to `files`: a store holds bytes, the rows above say whose."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class BatchStatus(StrEnum):
    """`validating -> in_progress -> finalizing -> completed | expired`, `failed` (a broken
    input file), `cancelling -> cancelled`."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


BATCH_FINAL_STATUSES = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)


class Batch(Base):
    """A batch of OpenAI requests: one job per good input line (`jobs.batch_id`)."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(
            f"status IN ({','.join(repr(s.value) for s in BatchStatus)})",
            name="ck_batches_status",
        ),
        Index("ix_batches_key_created", "api_key_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_batches_open",
            "status",
            postgresql_where=text("status IN ('in_progress','finalizing','cancelling')"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # "batch_<hex>"
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="RESTRICT")
    )
    endpoint: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)  # a broken file's
    # Lines refused at create: they never ran and go to the error file.
    refused: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_file_id: Mapped[str | None] = mapped_column(Text)
    error_file_id: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set while paused (`llmq.batches.pause`): its queued lines are not claimed or published.
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
