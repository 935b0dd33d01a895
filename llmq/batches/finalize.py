"""A batch's end: its output and error files, written exactly once.

Whoever notices that a batch's last job ended (the sweeper's pass, a cancel that ended
them all) calls `finalize_batch`, as often as it likes. Three steps: a conditional UPDATE
moves the batch to `finalizing` once none of its jobs is active; the two files are written
under ids made from the batch's id, from the job rows alone, in `custom_id` order (a
finalizer that dies here is run again and writes the same files over the same ids); a
second conditional UPDATE names them and ends the batch, so it ends once; the same
transaction writes the batch's webhook event to the outbox (`llmq.outbox`), announced after
the commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from llmq import outbox
from llmq.announce import Announcer, Committed
from llmq.batches.records import OPEN
from llmq.batches.validate import CHAT
from llmq.db import session_scope
from llmq.files import records as files
from llmq.files.store import FileStore
from llmq.models import ACTIVE_STATUSES, Batch, BatchStatus, Job, JobStatus
from llmq.openai_responses import Kind, completion, error_body

ROWS_PER_READ = 1000
JOB_ERRORS = {JobStatus.CANCELLED: "batch_cancelled", JobStatus.EXPIRED: "job_expired"}


def output_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-output"


def error_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-errors"


@dataclass(frozen=True)
class Ending:
    """What the writing step needs of a batch it moved to `finalizing` (or `cancelling`)."""

    id: str
    api_key_id: Any
    kind: Kind
    refused: list[dict[str, Any]]
    status: BatchStatus  # where it ends


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def _jobs(batch_id: str, succeeded: bool) -> Iterator[Job]:
    status = Job.status == JobStatus.SUCCEEDED
    with session_scope() as session:
        query = (
            sa.select(Job)
            .where(Job.batch_id == batch_id, status if succeeded else sa.not_(status))
            .order_by(Job.custom_id)
            .execution_options(yield_per=ROWS_PER_READ)
        )
        yield from session.scalars(query)


def output_lines(end: Ending) -> Iterator[bytes]:
    for job in _jobs(end.id, succeeded=True):
        response = {"status_code": 200, "request_id": str(job.id),
                    "body": completion(end.kind, [job])}  # fmt: skip
        yield _line({"id": f"batch_req_{job.id.hex}", "custom_id": job.custom_id,
                     "response": response, "error": None})  # fmt: skip


def error_lines(end: Ending) -> Iterator[bytes]:
    """Refused lines first, in input order, then the jobs that did not succeed."""
    for r in end.refused:
        status = 404 if r["code"] == "model_not_found" else 400
        body = error_body(r["message"], "invalid_request_error", r["param"], r["code"])
        yield _line({"id": f"batch_req_{end.id}_{r['line']}", "custom_id": r["custom_id"],
                     "response": {"status_code": status, "request_id": None, "body": body},
                     "error": {"code": r["code"], "message": r["message"]}})  # fmt: skip
    for job in _jobs(end.id, succeeded=False):
        error = job.error or {}
        code = str(error.get("code") or JOB_ERRORS.get(job.status, "job_failed"))
        if job.status == JobStatus.EXPIRED and end.status == BatchStatus.EXPIRED:
            code = "batch_expired"
        message = str(error.get("message") or f"the request's job ended {job.status}")
        yield _line({"id": f"batch_req_{job.id.hex}", "custom_id": job.custom_id,
                     "response": None, "error": {"code": code, "message": message}})  # fmt: skip


def begin(batch_id: str) -> Ending | None:
    """Move the batch to `finalizing` if it is open and none of its jobs is active; None when
    it is not ready or ended already."""
    with session_scope() as session:
        batch = session.get(Batch, batch_id, with_for_update=True)
        if batch is None or batch.status not in OPEN:
            return None
        active = sa.exists().where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_STATUSES))
        if session.scalar(sa.select(active)):
            return None
        if batch.status == BatchStatus.IN_PROGRESS:
            batch.status, batch.finalizing_at = BatchStatus.FINALIZING, sa.func.now()
        # Past its window, a batch ends expired even when its jobs' own deadline (the same)
        # ended them before the sweeper's batch pass did.
        past = batch.expired_at is not None or batch.expires_at <= datetime.now(UTC)
        if batch.status == BatchStatus.CANCELLING:
            status = BatchStatus.CANCELLED
        else:
            status = BatchStatus.EXPIRED if past else BatchStatus.COMPLETED
        kind: Kind = "chat" if batch.endpoint == CHAT else "text"
        return Ending(batch.id, batch.api_key_id, kind, list(batch.refused or []), status)


def write_files(store: FileStore, end: Ending) -> tuple[str | None, str | None]:
    """Both files, each under its batch's id (a second write replaces the first whole)."""
    ids = []
    for file_id, lines, name in (
        (output_file_id(end.id), output_lines(end), "batch_output.jsonl"),
        (error_file_id(end.id), error_lines(end), "batch_errors.jsonl"),
    ):
        first = next(lines, None)
        if first is None:
            ids.append(None)
            continue
        chunks = _chain(first, lines)
        files.write_file(store, end.api_key_id, name, "batch_output", chunks, file_id)
        ids.append(file_id)
    return ids[0], ids[1]


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def finalize_batch(store: FileStore, batch_id: str, announcer: Announcer) -> bool:
    """Write the batch's files and end it, once its last job ended; True when this call
    ended it. Safe to call at any time, from any process, any number of times."""
    end = begin(batch_id)
    if end is None:
        return False
    output_id, errors_id = write_files(store, end)
    stamp = {
        BatchStatus.COMPLETED: "completed_at",
        BatchStatus.CANCELLED: "cancelled_at",
        BatchStatus.EXPIRED: "expired_at",
    }[end.status]
    with session_scope() as session:
        ended = session.execute(
            sa.update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(OPEN))
            .values(
                status=end.status,
                output_file_id=output_id,
                error_file_id=errors_id,
                **{stamp: sa.func.coalesce(getattr(Batch, stamp), sa.func.now())},
            )
        ).rowcount
        deliveries = outbox.enqueue_batch_event(session, batch_id) if ended == 1 else []
    announcer.announce(Committed(deliveries=deliveries))
    return ended == 1


def ready_batches(limit: int = 100) -> list[str]:
    """Open batches none of whose jobs is active: each one's finalizer has yet to run, or
    died."""
    active = sa.exists().where(Job.batch_id == Batch.id, Job.status.in_(ACTIVE_STATUSES))
    with session_scope() as session:
        return list(
            session.scalars(sa.select(Batch.id).where(Batch.status.in_(OPEN), ~active).limit(limit))
        )
