"""A batch's results written back: the one move that ends a job with tokens to account for."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from llmq import outbox
from llmq.models import Job, JobStatus, LedgerEntry


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

    @property
    def status(self) -> JobStatus:
        return JobStatus.SUCCEEDED if self.succeeded else JobStatus.FAILED


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
            out.status,
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
        .where(fenced, Job.status == JobStatus.RUNNING)
        .values(status=results.c.status, finished_at=sa.func.now(), **recorded)
        .returning(Job.id, Job.api_key_id, Job.model, Job.alias, Job.variant)
        .execution_options(synchronize_session=False)
    ).all()
    cancelled = session.execute(
        sa.update(Job)
        .where(fenced, Job.status == JobStatus.CANCELLED, Job.completion_tokens.is_(None))
        .values(**recorded)
        .returning(Job.id, Job.api_key_id, Job.model, Job.alias, Job.variant)
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
                    "alias": row.alias,
                    "variant": row.variant,
                }
                for row in rows
            ],
        )
    outbox.enqueue_final_events(session, [row.id for row in ended])
    return [row.id for row in rows]
