"""/v1/jobs: submit (one or in bulk), read (with long-poll), list, cancel."""

from __future__ import annotations

import logging
from decimal import Decimal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from api import deps, waits
from api.openapi import responses
from api.schemas import BulkCreate, JobCreate, job_resource
from api.submission import Submission, check_total_tokens, submission, webhook_resolver
from llmq import job_queries, jobs, outbox
from llmq.announce import Committed
from llmq.db import session_scope, statement_scope
from llmq.errors import InvalidField, InvalidFields
from llmq.keys import Caller
from llmq.models import Job, JobStatus
from llmq.settings import Settings

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 422, 503),
)
SUBMIT_ERRORS = responses(400, 402, 413, 429)
log = logging.getLogger(__name__)


def _render(session, job: Job, settings: Settings) -> dict:
    """The job's resource; its costs are read only once it has usage to show them in."""
    cost = (
        job_queries.costs(session, [job.id]).get(job.id) if job.prompt_tokens is not None else None
    )
    return job_resource(job, cost, settings.flower_url)


@router.post("", status_code=202, responses=SUBMIT_ERRORS)
def submit(body: JobCreate, submission: Submission = Depends(submission)) -> dict:
    """Check limits, write the job, then put its message on the model's queue; answer at once.

    Once the row is committed the job is accepted: if its message cannot be published now,
    the sweeper publishes it (see `api.submission.publish`)."""
    admitted = submission.admit([submission.prepare(body)], submission.claim(body))
    job_id, settings = admitted.ids[0], submission.settings
    submission.response.headers["Location"] = f"/v1/jobs/{job_id}"
    if admitted.job is None:  # a replay: the job as it is now
        with session_scope() as session:
            job = job_queries.get_job(session, job_id, submission.caller.key_id)
            return _render(session, job, settings)
    job = admitted.job  # a cache hit is final: its cost is what it reserved
    cost = (job.reserved_cost_usd or Decimal(0), Decimal(0)) if job.cached else None
    return job_resource(job, cost, settings.flower_url)


@router.post("/bulk", status_code=202, responses=SUBMIT_ERRORS)
def submit_bulk(body: BulkCreate, submission: Submission = Depends(submission)) -> dict:
    """Up to 10,000 jobs: every item is checked first, and one bad item means nothing is
    written; then the key's limits for all of them at once, one transaction and one Redis
    pipeline. Ids come back in the order of the items. With an `Idempotency-Key`, a repeat
    of the same request answers with the same ids and creates nothing."""
    claim = submission.claim(body)
    prepared, errors = [], []
    resolve = webhook_resolver(body.jobs, submission.settings)
    for index, item in enumerate(body.jobs):
        try:
            prepared.append(submission.prepare(item, resolve))
        except InvalidField as exc:
            errors.append({"field": f"jobs[{index}].{exc.field}", "message": exc.message})
    if errors:
        raise InvalidFields(errors)
    check_total_tokens(prepared, submission.caller, "jobs")
    ids = submission.admit(prepared, claim).ids
    return {"object": "bulk", "count": len(ids), "ids": [str(i) for i in ids]}


@router.get("")
def list_jobs(
    status: JobStatus | None = None,
    model: str | None = Query(None, max_length=200, pattern=r"^[^\x00]*$"),
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = None,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    with session_scope() as session:
        rows, next_cursor = job_queries.list_jobs(
            session, caller.key_id, status=status, model=model, limit=limit, cursor=cursor
        )
        costs = job_queries.costs(session, [j.id for j in rows])
        data = [job_resource(j, costs.get(j.id), settings.flower_url) for j in rows]
    return {
        "object": "list",
        "data": data,
        "next_cursor": next_cursor,
        "has_more": bool(next_cursor),
    }


def load_job(job_id: str, caller: Caller, settings: Settings) -> tuple[str, dict]:
    """The job's status and public resource, as the caller may see it. No transaction: a
    single read needs none."""
    with statement_scope() as session:
        job, cost = job_queries.get_job_with_cost(session, job_id, caller.key_id)
    return job.status, job_resource(job, cost, settings.flower_url)


@router.get("/{job_id}", responses=responses(404, 429))
async def get_job(
    job_id: str,
    request: Request,
    wait: float = Query(0, ge=0, le=60, description="Hold up to N seconds until the job ends"),
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    def load() -> tuple[str, dict]:
        return load_job(job_id, caller, settings)

    status, resource = await run_in_threadpool(load)
    wait = min(wait, settings.long_poll_max_s)
    if wait <= 0 or job_queries.is_final(status):
        return resource
    client: aioredis.Redis = request.app.state.redis
    lease: waits.Lease | None = None

    async def reload() -> tuple[bool, dict]:
        status, resource = await run_in_threadpool(load)
        return job_queries.is_final(status), resource

    try:
        lease = await waits.acquire(
            client, settings.redis_prefix, caller, settings.max_open_waits_per_key,
            wait + waits.LEASE_MARGIN_S,
        )  # fmt: skip
        resource = await waits.until_ended(
            client, settings.redis_prefix, [resource["id"]], reload, wait
        )
    except RedisError:
        log.warning("long-poll could not use Redis; answering with the job as it is")
        status, resource = await run_in_threadpool(load)
    finally:
        if lease is not None:
            await lease.release()
    return resource


@router.post("/{job_id}/cancel", responses=responses(404, 409))
def cancel(
    job_id: str,
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> dict:
    """A queued job never runs; a running one stops at its next token."""
    return cancel_and_announce(request, job_id, caller, settings)


def cancel_and_announce(request: Request, job_id: str, caller: Caller, settings: Settings) -> dict:
    """Cancel the job (`jobs.cancel_job`), then tell workers, waiters and the rate limiter;
    returns the job's resource. Also what a client that leaves a waiting request causes."""
    with session_scope() as session:
        job, refund = jobs.cancel_job(session, job_id, caller.key_id)
        resource = _render(session, job, settings)
        # Always tell workers: the job may have been claimed just as it was cancelled.
        committed = Committed(
            ended=[str(job.id)],
            deliveries=outbox.created_in(session),
            stop=[str(job.id)],
            token_deltas={caller.key_id: -refund} if refund else {},
            batches=[job.batch_id] if job.batch_id else [],
        )
    deps.announcer(request).announce(committed)
    return resource
