"""/v1/jobs: submit, read (with long-poll), list, cancel."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.schemas import JobCreate, job_resource
from llmq import events, jobs, metrics
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import InvalidField, QueueUnavailable
from llmq.keys import Caller
from llmq.models import Job, LedgerEntry
from llmq.queues import get_celery, publish_generate
from llmq.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


def _costs(session, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Decimal, Decimal]]:
    if not ids:
        return {}
    rows = session.query(LedgerEntry.job_id, LedgerEntry.cost_usd, LedgerEntry.gpu_cost_usd).filter(
        LedgerEntry.job_id.in_(ids)
    )
    return {r.job_id: (r.cost_usd, r.gpu_cost_usd) for r in rows}


def _render(session, job: Job, settings: Settings) -> dict:
    return job_resource(job, _costs(session, [job.id]).get(job.id), settings.flower_url)


def validate_submit(body: JobCreate, catalog: Catalog, settings: Settings) -> int:
    """Checks only the catalog and settings can make; returns the job's max_tokens."""
    if body.model not in catalog:
        raise InvalidField("model", f"unknown model {body.model!r}; see GET /v1/models")
    if (body.prompt is None) == (body.messages is None):
        raise InvalidField("prompt", "give exactly one of `prompt` or `messages`")
    if body.input_chars() > settings.max_prompt_chars:
        field = "prompt" if body.prompt is not None else "messages"
        raise InvalidField(field, f"input exceeds {settings.max_prompt_chars} characters")
    spec = catalog.get(body.model)
    max_tokens = body.max_tokens or spec.default_max_tokens
    if max_tokens > spec.max_new_tokens:
        raise InvalidField("max_tokens", f"{body.model} allows at most {spec.max_new_tokens}")
    if body.expires_in_s is not None and body.expires_in_s > settings.max_expires_in_s:
        raise InvalidField("expires_in_s", f"at most {settings.max_expires_in_s} seconds")
    return max_tokens


@router.post("", status_code=202)
def submit(
    body: JobCreate,
    response: Response,
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
) -> dict:
    """Write the job, then put its message on the model's queue; answer at once."""
    max_tokens = validate_submit(body, catalog, settings)
    new = jobs.NewJob(
        model=body.model,
        params=body.params(max_tokens),
        prompt=body.prompt,
        messages=[m.model_dump() for m in body.messages] if body.messages else None,
        priority=body.priority,
        metadata=body.metadata,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        expires_at=datetime.now(UTC)
        + timedelta(seconds=body.expires_in_s or settings.default_expires_in_s),
    )
    with session_scope() as session:
        job = jobs.create_job(session, caller.key_id, new)
    try:
        publish_generate(get_celery(), str(job.id), job.model, job.priority)
    except Exception as exc:
        with session_scope() as session:
            jobs.delete_unpublished(session, job.id)
        raise QueueUnavailable(f"the queue is unavailable, job not accepted: {exc}") from exc
    metrics.JOBS_SUBMITTED.labels(job.model).inc()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_resource(job, None, settings.flower_url)


@router.get("")
def list_jobs(
    status: Status | None = None,
    model: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = None,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    with session_scope() as session:
        rows, next_cursor = jobs.list_jobs(
            session, caller.key_id, status=status, model=model, limit=limit, cursor=cursor
        )
        costs = _costs(session, [j.id for j in rows])
        data = [job_resource(j, costs.get(j.id), settings.flower_url) for j in rows]
    return {
        "object": "list",
        "data": data,
        "next_cursor": next_cursor,
        "has_more": bool(next_cursor),
    }


@router.get("/{job_id}")
async def get_job(
    job_id: str,
    request: Request,
    wait: float = Query(0, ge=0, le=60, description="Hold up to N seconds until the job ends"),
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    def load() -> tuple[str, dict]:
        with session_scope() as session:
            job = jobs.get_job(session, job_id, caller.key_id)
            return job.status, _render(session, job, settings)

    status, resource = await run_in_threadpool(load)
    wait = min(wait, settings.long_poll_max_s)
    if wait <= 0 or jobs.is_final(status):
        return resource
    client: aioredis.Redis = request.app.state.redis
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        # Subscribe before the second read, so an end between the two is not missed.
        await pubsub.subscribe(events.job_channel(settings.redis_prefix, resource["id"]))
        status, resource = await run_in_threadpool(load)
        deadline = asyncio.get_running_loop().time() + wait
        while not jobs.is_final(status):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            message = await pubsub.get_message(timeout=min(left, 5.0))
            if message is not None and events.is_done(message["data"]):
                status, resource = await run_in_threadpool(load)
    finally:
        await pubsub.aclose()
    return resource


@router.post("/{job_id}/cancel")
def cancel(
    job_id: str,
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    """A queued job never runs; a running one stops at its next token."""
    with session_scope() as session:
        job, was_running = jobs.cancel_job(session, job_id, caller.key_id)
        resource = _render(session, job, settings)
    client = request.app.state.sync_redis
    if was_running:
        events.publish_cancel(client, settings.redis_prefix, str(job.id))
    events.publish_done(client, settings.redis_prefix, [str(job.id)])
    return resource
