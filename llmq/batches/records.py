"""Batch rows: created with their jobs in one transaction, read with their counts and usage,
listed by key, cancelled. No HTTP: the API's routes and the sweeper call these."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import admission, budgets, jobs, outbox
from llmq.batches.validate import Accepted, FileCheck, Refused
from llmq.errors import BatchNotFound, InvalidField, JobStateConflict
from llmq.keys import Caller
from llmq.models import Batch, BatchStatus, Job, JobStatus, LedgerEntry

OPEN = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


CHUNK_LINES = 2000  # accepted lines turned into jobs and written (one COPY) at a time


@dataclass
class Admitted:
    """What a batch's create wrote: its jobs' count, models and worst-case cost together."""

    jobs: int = 0
    models: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)

    def add(self, new_jobs: list[jobs.NewJob]) -> None:
        self.jobs += len(new_jobs)
        self.models.update(new.model for new in new_jobs)
        self.cost_usd += sum((n.reserved_cost_usd or Decimal(0) for n in new_jobs), Decimal(0))


def create_batch(
    session: Session,
    caller: Caller,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    window_s: int,
    metadata: dict[str, str] | None,
    check: FileCheck,
    lines: Callable[[], Iterable[bytes]],
    to_job: Callable[[Accepted], jobs.NewJob | Refused],
) -> tuple[Batch, Admitted]:
    """The batch row and a job for each accepted line of the input file (`lines()` reads
    it), or a failed batch with the file's line errors and no job.

    The file streams through `check` once; its accepted lines become jobs (`to_job`, which
    may still refuse one) written `CHUNK_LINES` at a time under a savepoint, so memory stays
    flat however long the file. A file found broken (a repeated `custom_id` is only known at
    the end) rolls the savepoint back. The key's budget is checked last, for every job
    together, under the key's lock, taken only now so that the key's other submits wait for
    the check and the commit, not for the whole file. A failed batch's webhook event is
    written with it (`outbox.created_in`)."""
    now = datetime.now(UTC)
    batch = Batch(
        id=new_batch_id(), api_key_id=caller.key_id, endpoint=endpoint,
        input_file_id=input_file_id, completion_window=completion_window,
        expires_at=now + timedelta(seconds=window_s), meta=metadata, refused=[], total=0,
        status=BatchStatus.IN_PROGRESS, in_progress_at=now,
    )  # fmt: skip
    session.add(batch)
    session.flush()
    admitted, savepoint = Admitted(), session.begin_nested()
    for chunk in _chunks(check.accepted(lines()), CHUNK_LINES):
        new_jobs = []
        for line in chunk:
            new = to_job(line)
            if isinstance(new, Refused):
                check.refused.append(new)
                continue
            new.batch_id, new.custom_id = batch.id, line.custom_id
            new_jobs.append(new)
        jobs.create_jobs(session, caller.key_id, new_jobs)
        admitted.add(new_jobs)
    check.find_repeats(lines())
    if check.broken:
        savepoint.rollback()
        batch.status, batch.failed_at, batch.in_progress_at = BatchStatus.FAILED, now, None
        batch.errors = [e.as_dict() for e in check.errors]
        session.flush()
        outbox.enqueue_batch_event(session, batch.id)
        return batch, Admitted()
    savepoint.commit()
    mark_duplicates(session, batch.id)
    check.refused.sort(key=lambda r: r.line)
    batch.refused = [r.as_dict() for r in check.refused]
    batch.total = admitted.jobs + len(check.refused)
    session.flush()
    budgets.lock_key(session, caller.key_id)
    admission.check_budget_cost(session, caller, admitted.cost_usd, admitted.jobs, written=True)
    return batch, admitted


def _chunks(items: Iterable[Accepted], size: int) -> Iterator[list[Accepted]]:
    chunk: list[Accepted] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Of each group of two or more of the batch's lines with one `dedup_key`, the first by
# `custom_id` leads; the others follow it, out of the backlog. Postgres sorts, so Python
# holds no line.
_MARK_DUPLICATES = sa.text(
    """
    WITH marked AS (
      UPDATE jobs SET same_as = NULLIF(groups.leader, jobs.id),
                      leads = groups.leader = jobs.id,
                      in_backlog = jobs.in_backlog AND groups.leader = jobs.id
        FROM (SELECT id,
                     first_value(id) OVER (PARTITION BY dedup_key ORDER BY custom_id, id)
                       AS leader,
                     count(*) OVER (PARTITION BY dedup_key) AS lines
                FROM jobs
               WHERE batch_id = :batch_id AND dedup_key IS NOT NULL) AS groups
       WHERE jobs.id = groups.id AND groups.lines > 1
      RETURNING jobs.same_as
    )
    SELECT count(same_as) FROM marked
    """
)


def mark_duplicates(session: Session, batch_id: str) -> int:
    """Make every line that repeats an earlier line of the batch (equal `dedup_key`) a
    follower of the first: queued, never published, answered by `llmq.jobs.dedup` once its
    leader ends. Returns how many lines follow; one statement for any batch size."""
    return int(session.execute(_MARK_DUPLICATES, {"batch_id": batch_id}).scalar_one())


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


# How far back the batch's throughput is measured: recent enough to follow a pool that
# scaled or a pause, long enough to hold more than one batch slot's lines.
RATE_WINDOW_S = 60


@dataclass(frozen=True)
class Progress:
    completed: int  # jobs that succeeded
    failed: int  # refused lines, and jobs that ended otherwise
    queued: int  # jobs waiting for a worker (a paused batch's wait here)
    running: int
    input_tokens: int  # from the ledger
    output_tokens: int
    recent_lines: int = 0  # jobs that ended (succeeded or failed) within the rate window
    recent_output_tokens: int = 0
    window_s: float = 0.0  # the rate window, cut short by the batch's start

    @property
    def active(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True)
class Estimate:
    tokens_per_s: float | None  # output tokens per second, over the rate window
    eta_s: float | None  # seconds until its last line ends, at that pace


def estimate(counts: Progress, paused: bool) -> Estimate:
    """The batch's measured pace and what it leaves: the lines still to run times the
    seconds per line measured over the window. Unknown (None) until a line ended within the
    window; no ETA while paused, since nothing runs."""
    if counts.recent_lines == 0 or counts.window_s <= 0:
        return Estimate(None, 0.0 if counts.active == 0 and not paused else None)
    tokens_per_s = counts.recent_output_tokens / counts.window_s
    if paused:
        return Estimate(tokens_per_s, None)
    return Estimate(tokens_per_s, counts.active * counts.window_s / counts.recent_lines)


def progress(session: Session, batch: Batch) -> Progress:
    """Counts and the rate window's throughput from the batch's jobs, and token totals
    from its ledger rows."""
    status, now = Job.status, sa.func.now()
    since = sa.func.greatest(
        now - timedelta(seconds=RATE_WINDOW_S), sa.func.coalesce(batch.in_progress_at, now)
    )
    recent = sa.and_(status.in_(("succeeded", "failed")), Job.finished_at >= since)
    row = session.execute(
        sa.select(
            sa.func.count().filter(status == JobStatus.SUCCEEDED),
            sa.func.count().filter(status == JobStatus.QUEUED),
            sa.func.count().filter(status == JobStatus.RUNNING),
            sa.func.count(),
            sa.func.count().filter(recent),
            sa.func.coalesce(sa.func.sum(Job.completion_tokens).filter(recent), 0),
            sa.func.extract("epoch", now - since),
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
    succeeded, queued, running, total, recent_lines, recent_tokens, window_s = row
    failed = total - succeeded - queued - running + len(batch.refused or [])
    return Progress(
        succeeded, failed, queued, running, int(tokens[0]), int(tokens[1]),
        int(recent_lines), int(recent_tokens), float(window_s or 0),
    )  # fmt: skip


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


def _at(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_object(batch: Batch, counts: Progress | None) -> dict[str, Any]:
    """OpenAI's batch object, with llmq's extensions (`llmq_fields`)."""
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
        "error_file_id": batch.error_file_id, "created_at": _at(batch.created_at),
        "in_progress_at": _at(batch.in_progress_at), "expires_at": _at(batch.expires_at),
        "finalizing_at": _at(batch.finalizing_at), "completed_at": _at(batch.completed_at),
        "failed_at": _at(batch.failed_at), "expired_at": _at(batch.expired_at),
        "cancelling_at": _at(batch.cancelling_at), "cancelled_at": _at(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": counts.completed if counts else 0,
            "failed": counts.failed if counts else 0,
        },
        "metadata": batch.meta, "usage": usage, **llmq_fields(batch, counts),
    }  # fmt: skip


def llmq_fields(batch: Batch, counts: Progress | None) -> dict[str, Any]:
    """llmq's extensions to the batch object: the pause mark, and progress with the pace
    measured over the rate window (`done` counts the lines that ended either way)."""
    paused = batch.paused_at is not None
    fields: dict[str, Any] = {"paused": paused, "paused_at": _at(batch.paused_at)}
    if counts is None:
        return fields | {"llmq_progress": None}
    pace = estimate(counts, paused)
    fields["llmq_progress"] = {
        "done": counts.completed + counts.failed, "failed": counts.failed, "total": batch.total,
        "queued": counts.queued, "running": counts.running,
        "tokens_per_s": round(pace.tokens_per_s, 3) if pace.tokens_per_s is not None else None,
        "eta_s": round(pace.eta_s, 3) if pace.eta_s is not None else None,
    }  # fmt: skip
    return fields
