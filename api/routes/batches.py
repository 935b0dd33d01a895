"""/v1/batches: OpenAI's Batch API, each good input line an ordinary job.

Create reads the whole input file from the store and checks every line
(`llmq.batches.validate`) before any job exists; a broken file makes a `failed` batch with
line-numbered errors. Then, in one transaction, the key's budget is checked for every job
together (402 with the estimate), and the batch and its jobs are written, in the backlog:
nothing goes to Redis here. The scheduler's feeder publishes them as their model's queue has
room, by priority, deadline and fair share across keys (`llmq.backlog`), on the model's batch
lane, which workers read only when no interactive job waits. Batch jobs are not charged to
the key's per-minute rates: the feeder paces them. Every route sees only the calling key's
batches.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api import deps
from api.openapi import openai_responses
from api.submission import reserve
from llmq import metrics, outbox
from llmq.announce import Committed
from llmq.batches import records
from llmq.batches.finalize import finalize_batch
from llmq.batches.sweep import stopped_committed
from llmq.batches.validate import Checked, Refused, check_lines
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import InvalidField
from llmq.files import records as files
from llmq.files.store import FileStore
from llmq.jobs import NewJob
from llmq.keys import Caller
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


def _render(session, batch) -> dict[str, Any]:
    counts = records.progress(session, batch) if batch.status != "failed" else None
    return records.batch_object(batch, counts)


def _read(batch_id: str, caller: Caller) -> BatchObject:
    with session_scope() as session:
        return BatchObject(**_render(session, records.get_batch(session, batch_id, caller.key_id)))


def _jobs(
    checked: Checked, caller: Caller, catalog: Catalog, settings: Settings, window_s: int
) -> list[NewJob]:
    """Each accepted line's job, with what it reserves and its deadline, the batch's; a line
    over the key's per-minute tokens moves to the refused ones."""
    kept, new_jobs = [], []
    for line in checked.accepted:
        try:
            new = reserve(line.job, caller, catalog, settings, window_s).new
        except InvalidField as exc:
            checked.refused.append(
                Refused(line.line, line.custom_id, "invalid_request", exc.message, exc.field)
            )
            continue
        new.reserved_tokens = None  # not charged to the rates: nothing to reconcile
        new.in_backlog = True  # the feeder publishes it
        kept.append(line)
        new_jobs.append(new)
    checked.accepted = kept
    checked.refused.sort(key=lambda r: r.line)
    return new_jobs


@router.post("", responses=openai_responses(402, 404))
def create_batch(
    body: BatchCreate,
    request: Request,
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
    store: FileStore = Depends(deps.file_store),
) -> BatchObject:
    """Check the input file, then create the batch and its jobs together."""
    with session_scope() as session:
        files.get_file(session, body.input_file_id, caller.key_id)
    lines = store.lines(body.input_file_id, settings.max_batch_line_bytes)
    checked = check_lines(
        lines, body.endpoint, catalog, settings.max_prompt_chars, settings.max_batch_lines
    )
    window_s = min(WINDOWS_S[body.completion_window], settings.batch_completion_window_s)
    new_jobs = [] if checked.broken else _jobs(checked, caller, catalog, settings, window_s)
    with session_scope() as session:
        batch, ids = records.create_batch(
            session, caller, input_file_id=body.input_file_id, endpoint=body.endpoint,
            completion_window=body.completion_window, window_s=window_s,
            metadata=body.metadata, checked=checked, new_jobs=new_jobs,
        )  # fmt: skip
        batch_id, deliveries = batch.id, outbox.created_in(session)
    announcer = deps.announcer(request)
    announcer.announce(Committed(deliveries=deliveries))  # a failed batch's webhook
    if ids:
        for new in new_jobs:
            metrics.JOBS_SUBMITTED.labels(new.model).inc()
    elif not checked.broken:
        finalize_batch(store, batch_id, announcer)  # every line was refused: nothing ends it
    return _read(batch_id, caller)


@router.get("")
def list_batches(
    after: str | None = Query(None, max_length=200, pattern=NO_NUL),
    limit: int = Query(20, ge=1, le=100),
    caller: Caller = Depends(deps.caller),
) -> BatchList:
    """The key's batches, newest first; page on with `after`."""
    with session_scope() as session:
        rows, has_more = records.list_batches(session, caller.key_id, after, limit)
        data = [_render(session, row) for row in rows]
    return BatchList(
        data=data,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
        has_more=has_more,
    )


@router.get("/{batch_id}", responses=openai_responses(404))
def get_batch(batch_id: BatchId, caller: Caller = Depends(deps.caller)) -> BatchObject:
    return _read(batch_id, caller)


@router.post("/{batch_id}/cancel", responses=openai_responses(404, 409))
def cancel_batch(
    batch_id: BatchId,
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
    store: FileStore = Depends(deps.file_store),
) -> BatchObject:
    """Cancel the batch's queued and running jobs (as `POST /v1/jobs/{id}/cancel` does each);
    it is `cancelling` until its last job ends, then `cancelled` with its files."""
    with session_scope() as session:
        batch = records.get_batch(session, batch_id, caller.key_id, lock=True)
        stopped = records.start_cancel(session, batch)
        committed = stopped_committed(session, stopped)
    announcer = deps.announcer(request)
    announcer.announce(committed)
    try:
        finalize_batch(store, batch_id, announcer)
    except Exception:  # the sweeper's pass finalizes it
        log.warning("could not finalize batch %s yet", batch_id, exc_info=True)
    return _read(batch_id, caller)
