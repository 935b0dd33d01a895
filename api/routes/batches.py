"""/v1/batches: OpenAI's Batch API, each good input line an ordinary job.

Create is one transaction. With an `Idempotency-Key` it first takes that key's lock and looks
it up (`llmq.idempotency`, as on submit): a retry of the same request answers with the batch
the first one made (`Idempotent-Replayed: true`) before anything is charged, a twin sent
meanwhile waits for the first and does the same, and the same key with another body is a 422.
Then the create counts as one request against the key's `rpm` (429 past it). Then the input
file streams from the store, line by line: each line is checked (`llmq.batches.validate`) and
the accepted ones are written as jobs in chunks (`llmq.batches.records.create_batch`), so a
million-line file takes flat memory; a broken file makes a `failed` batch with line-numbered
errors and no job. Then the key's budget is checked for every job together (402 with the
estimate), and the idempotency key is written; the jobs wait in the backlog: nothing goes to
Redis here. The scheduler's
feeder publishes them as their model's queue has room, by priority, deadline and fair share
across keys (`llmq.backlog`), on the model's batch lane, which workers read only when no
interactive job waits.

A batch's lines are exempt from the key's `tpm` and `max_concurrent`, as OpenAI keeps a
batch quota apart from its rate limits: they are not charged to the per-minute tokens nor
counted in flight, and the feeder paces them. Only a line whose own
worst case is over the key's whole `tpm` goes to the error file. Every route sees only the
calling key's batches.

llmq's extensions: `pause` and `resume` (`llmq.batches.pause`), and `events`, server-sent
progress until the batch ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sse_starlette import EventSourceResponse

from api import deps, ratelimits, waits
from api.openapi import openai_responses
from api.submission import Submission, dedup_keys, reserve, submission
from llmq import events, idempotency, metrics, outbox
from llmq.announce import Committed
from llmq.batches import pause, records
from llmq.batches.finalize import finalize_batch
from llmq.batches.sweep import stopped_committed
from llmq.batches.validate import Accepted, FileCheck, Refused
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import InvalidField, JobStateConflict
from llmq.files import records as files
from llmq.files.store import FileStore
from llmq.jobs import NewJob
from llmq.keys import Caller
from llmq.ledger import QUANTUM
from llmq.models import BATCH_FINAL_STATUSES, BatchStatus
from llmq.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/batches",
    tags=["batches"],
    route_class=deps.KeyedRoute,
    responses=openai_responses(400, 401, 503),
)
NO_NUL = r"^[^\x00]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
BatchId = Annotated[str, Path(max_length=200, pattern=NO_NUL)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
MetadataValue = Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)]
WINDOWS_S = {"24h": 86_400}
INLINE_FINALIZE_LINES = 10_000  # a cancelled batch this small gets its files in the request


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: Id
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"]
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)


class BatchObject(BaseModel):
    """OpenAI's batch object (see `llmq.batches.records.batch_object`)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["batch"] = "batch"
    status: str


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _render(session, batch, at_risk: dict | None = None) -> dict[str, Any]:
    """OpenAI's batch object, plus llmq's `llmq_deadline_at_risk`: the scheduler found that
    the batch's pool cannot finish it by `expires_at` even at its `max_replicas`."""
    counts = records.progress(session, batch) if batch.status != "failed" else None
    return records.batch_object(batch, counts) | {"llmq_deadline_at_risk": at_risk}


def _at_risk(request: Request, batch_ids: list[str]) -> list[dict | None]:
    """What the scheduler's leader last said of each batch's deadline (None: not at risk)."""
    prefix = request.app.state.settings.redis_prefix
    keys = [events.at_risk_key(prefix, batch_id) for batch_id in batch_ids]
    try:
        raw = request.app.state.sync_redis.mget(keys) if keys else []
    except redis.RedisError:  # the batch itself is in Postgres; this is a hint
        return [None] * len(batch_ids)
    return [json.loads(r) if r else None for r in raw]


def _read(batch_id: str, caller: Caller, request: Request) -> BatchObject:
    [at_risk] = _at_risk(request, [batch_id])
    with session_scope() as session:
        batch = records.get_batch(session, batch_id, caller.key_id)
        return BatchObject(**_render(session, batch, at_risk))


def _line_job(
    caller: Caller, catalog: Catalog, settings: Settings, window_s: int
) -> Callable[[Accepted], NewJob | Refused]:
    """What turns an accepted line into its job, with what it reserves and its deadline, the
    batch's; a line over the key's per-minute tokens is refused instead."""
    dedup_key = dedup_keys(catalog, caller.key_id)

    def to_job(line: Accepted) -> NewJob | Refused:
        try:
            new = reserve(line.job, caller, catalog, settings, window_s).new
        except InvalidField as exc:
            return Refused(line.line, line.custom_id, "invalid_request", exc.message, exc.field)
        new.reserved_tokens = None  # not charged to the rates: nothing to reconcile
        if new.reserved_cost_usd is not None:  # a batch line is priced at the batch factor
            factor = catalog.get(new.model).price_factor(batch=True)
            new.reserved_cost_usd = (new.reserved_cost_usd * factor).quantize(QUANTUM)
        new.in_backlog = True  # the scheduler's feeder publishes it
        new.dedup_key = dedup_key(new)  # equal lines run once
        return new

    return to_job


@dataclass(frozen=True)
class Created:
    batch_id: str
    replayed: bool  # an identical earlier request made the batch; nothing new was written
    deliveries: list[str] = field(default_factory=list)  # a failed batch's webhook
    models: Counter[str] = field(default_factory=Counter)  # new jobs by model, for the counters
    unended: bool = False  # every line was refused: no job's end will finalize it


def _create(
    body: BatchCreate, request: Request, submission: Submission, store: FileStore
) -> Created:
    """Replay, rate, file check, budget, then the batch, its jobs and its idempotency key, in
    one transaction under the idempotency key's lock: a twin waits for it, then replays."""
    caller, catalog, settings = submission.caller, submission.catalog, submission.settings
    claim = submission.claim(body)
    retention = timedelta(hours=settings.idempotency_retention_h)
    with session_scope() as session:
        if claim is not None:  # a replay answers even if the file is gone since
            idempotency.lock(session, caller.key_id, claim.key)
            earlier = idempotency.find_batch(session, caller.key_id, claim, retention)
            if earlier is not None:
                return Created(earlier, True)
        files.get_file(session, body.input_file_id, caller.key_id)
        rates = ratelimits.enforce_rules(request, caller, ratelimits.rpm_rules(caller))
        submission.response.headers.update(rates)
        window_s = min(WINDOWS_S[body.completion_window], settings.batch_completion_window_s)
        batch, admitted = records.create_batch(
            session, caller, input_file_id=body.input_file_id, endpoint=body.endpoint,
            completion_window=body.completion_window, window_s=window_s,
            metadata=body.metadata,
            check=FileCheck(body.endpoint, catalog, settings.max_prompt_chars,
                            settings.max_batch_lines, str(caller.key_id)),
            lines=lambda: store.lines(body.input_file_id, settings.max_batch_line_bytes),
            to_job=_line_job(caller, catalog, settings, window_s),
        )  # fmt: skip
        # Under the lock no twin can have recorded the key since `find_batch`.
        if claim is not None and not idempotency.record(
            session, caller.key_id, claim, [], retention, batch_id=batch.id
        ):
            raise JobStateConflict(
                f"a request with {idempotency.HEADER} {claim.key!r} is in progress; retry"
            )
        deliveries = outbox.created_in(session)
        unended = admitted.jobs == 0 and batch.status != BatchStatus.FAILED
        return Created(batch.id, False, deliveries, admitted.models, unended)


@router.post("", responses=openai_responses(402, 404, 409, 422, 429))
def create_batch(
    body: BatchCreate,
    request: Request,
    submission: Submission = Depends(submission),
    store: FileStore = Depends(deps.file_store),
) -> BatchObject:
    """Check the input file, then create the batch and its jobs together; the same
    `Idempotency-Key` and body again answer with the same batch."""
    created = _create(body, request, submission, store)
    if created.replayed:
        submission.response.headers[idempotency.REPLAYED] = "true"
        return _read(created.batch_id, submission.caller, request)
    announcer = deps.announcer(request)
    announcer.announce(Committed(deliveries=created.deliveries))
    for model, count in created.models.items():
        metrics.JOBS_SUBMITTED.labels(model).inc(count)
    if created.unended:
        finalize_batch(store, created.batch_id, announcer)
    return _read(created.batch_id, submission.caller, request)


@router.get("")
def list_batches(
    request: Request,
    after: str | None = Query(None, max_length=200, pattern=NO_NUL),
    limit: int = Query(20, ge=1, le=100),
    caller: Caller = Depends(deps.caller),
) -> BatchList:
    """The key's batches, newest first; page on with `after`."""
    with session_scope() as session:
        rows, has_more = records.list_batches(session, caller.key_id, after, limit)
        risks = _at_risk(request, [row.id for row in rows])
        data = [_render(session, row, risk) for row, risk in zip(rows, risks, strict=True)]
    return BatchList(
        data=data,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
        has_more=has_more,
    )


@router.get("/{batch_id}", responses=openai_responses(404))
def get_batch(
    batch_id: BatchId, request: Request, caller: Caller = Depends(deps.caller)
) -> BatchObject:
    return _read(batch_id, caller, request)


@router.post("/{batch_id}/cancel", responses=openai_responses(404, 409))
def cancel_batch(
    batch_id: BatchId,
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
    store: FileStore = Depends(deps.file_store),
) -> BatchObject:
    """Cancel the batch's queued and running jobs (as `POST /v1/jobs/{id}/cancel` does each);
    it is `cancelling` until its last job ends, then `cancelled` with its files. A batch of
    up to `INLINE_FINALIZE_LINES` lines is finalized before the answer when none of its
    jobs runs; a larger one's files are written by the webhook worker (or the sweeper's
    pass), not while the client waits."""
    with session_scope() as session:
        batch = records.get_batch(session, batch_id, caller.key_id, lock=True)
        stopped = records.start_cancel(session, batch)
        committed = stopped_committed(session, stopped)
        inline = batch.total <= INLINE_FINALIZE_LINES
    if not inline:
        committed.batches.append(batch_id)
    announcer = deps.announcer(request)
    announcer.announce(committed)
    try:
        if inline:
            finalize_batch(store, batch_id, announcer)
    except Exception:  # the sweeper's pass finalizes it
        log.warning("could not finalize batch %s yet", batch_id, exc_info=True)
    return _read(batch_id, caller, request)


@router.post("/{batch_id}/pause", responses=openai_responses(404, 409))
def pause_batch(
    batch_id: BatchId, request: Request, caller: Caller = Depends(deps.caller)
) -> BatchObject:
    """llmq extension: its running lines finish, and no queued line starts until resumed."""
    with session_scope() as session:
        pause.pause(session, records.get_batch(session, batch_id, caller.key_id, lock=True))
    return _read(batch_id, caller, request)


@router.post("/{batch_id}/resume", responses=openai_responses(404, 409))
def resume_batch(
    batch_id: BatchId, request: Request, caller: Caller = Depends(deps.caller)
) -> BatchObject:
    """llmq extension: the lines of a paused batch still queued go back to the backlog, for
    the scheduler's feeder to publish."""
    with session_scope() as session:
        batch = records.get_batch(session, batch_id, caller.key_id, lock=True)
        pause.resume(session, batch)
    return _read(batch_id, caller, request)


EVENTS_POLL_S = 0.5  # how often an events stream reads the batch's counts


@router.get(
    "/{batch_id}/events", response_class=EventSourceResponse, responses=openai_responses(404, 429)
)
async def batch_events(
    batch_id: BatchId,
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> EventSourceResponse:
    """llmq extension: a `progress` event with the batch object whenever its status, pause
    or counts change, then one `batch` event once it is final, and the stream closes. An
    open stream counts against the key's cap on open waits."""
    first = await run_in_threadpool(_read, batch_id, caller, request)
    lease = await waits.acquire(
        request.app.state.redis, settings.redis_prefix, caller, settings.max_open_waits_per_key,
        waits.STREAM_LEASE_S,
    )  # fmt: skip

    async def stream() -> AsyncIterator[dict]:
        batch, sent, renewed_at = first.model_dump(), None, time.monotonic()
        try:
            while batch["status"] not in BATCH_FINAL_STATUSES:
                if time.monotonic() - renewed_at > waits.STREAM_LEASE_S / 3:
                    await lease.renew(waits.STREAM_LEASE_S)
                    renewed_at = time.monotonic()
                seen = _changes(batch)
                if seen != sent:
                    sent = seen
                    yield {"event": "progress", "data": json.dumps(batch)}
                await asyncio.sleep(EVENTS_POLL_S)
                batch = (await run_in_threadpool(_read, batch_id, caller, request)).model_dump()
            yield {"event": "batch", "data": json.dumps(batch)}
        finally:
            await lease.release()

    return EventSourceResponse(stream(), ping=15)


def _changes(batch: dict[str, Any]) -> tuple:
    """What a new progress event is sent for (the pace alone changes every read)."""
    progress = batch.get("llmq_progress") or {}
    counts = tuple(progress.get(k) for k in ("done", "failed", "queued", "running"))
    return batch["status"], batch["paused"], counts
