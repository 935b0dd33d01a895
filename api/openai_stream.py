"""`stream: true` on the OpenAI routes: the jobs' text as OpenAI's stream chunks.

Each job's text comes from its Redis stream (`llmq.events`), as `GET /v1/jobs/{id}/events`
reads it; one XREAD follows every job of the request, so `n` choices stream side by side.
When all have ended: each choice's closing chunk (its `finish_reason`), the usage chunk if
the client asked for it, then `data: [DONE]`. A job that ended without succeeding, or the
wait limit, ends the stream with an error chunk (OpenAI's envelope, naming the jobs), which
the `openai` client raises as an APIError. The stream holds one of the key's open waits.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from api import waits
from llmq import events, job_queries
from llmq.db import session_scope
from llmq.errors import JobNotDone
from llmq.keys import Caller
from llmq.models import Job
from llmq.openai_responses import (
    Kind,
    chunk,
    chunk_head,
    error_body,
    unsuccessful,
    usage_chunk,
    wait_interrupted,
    wait_limit_reached,
)
from llmq.settings import Settings

BLOCK_MS = 3000  # one read's wait: well under the Redis client's socket timeout
WAIT_FAULTS = (RedisError, SQLAlchemyError)  # the jobs exist: end with an error, not a retry
SAID_ALL: dict = {}  # marks where leaving stops cancelling the jobs


def load_jobs(ids: list[str], key_id: uuid.UUID) -> list[Job]:
    with session_scope() as session:
        return job_queries.get_jobs(session, ids, key_id)


def _data(body: dict) -> dict:
    return {"data": json.dumps(body)}


def _error(failure: JobNotDone) -> dict:
    body = error_body(str(failure), "server_error", None, failure.code)
    body["error"]["job_ids"] = failure.job_ids
    return _data(body)


async def chunks(
    kind: Kind,
    request: Request,
    ids: list[str],
    caller: Caller,
    settings: Settings,
    include_usage: bool,
    lease: waits.Lease,
    abandoned: Callable[[], Awaitable[None]],
) -> AsyncIterator[dict]:
    """The chunks, under the request's open-wait `lease` (released at the end); `abandoned`
    runs if the stream stops before it said all it will say (the client left)."""
    client = request.app.state.redis
    said_all = False  # the stream told the client all it will: leaving now cancels nothing
    try:
        jobs = await run_in_threadpool(load_jobs, ids, caller.key_id)
        head = chunk_head(kind, jobs[0], include_usage)
        async for item in _chunks(kind, client, lease, ids, caller, settings, head):
            if item is SAID_ALL:
                said_all = True
            else:
                yield item
    except WAIT_FAULTS:
        said_all = True
        yield _error(wait_interrupted(ids))
    finally:
        await lease.release()
        if not said_all:
            await abandoned()


async def _chunks(
    kind: Kind,
    client: aioredis.Redis,
    lease: waits.Lease,
    ids: list[str],
    caller: Caller,
    settings: Settings,
    head: dict,
) -> AsyncIterator[dict]:
    """The chunks, and `SAID_ALL` once what follows no longer needs the client to stay."""
    index_of = {events.stream_key(settings.redis_prefix, job_id): i for i, job_id in enumerate(ids)}
    cursors = dict.fromkeys(index_of, "0-0")
    deadline = time.monotonic() + settings.openai_wait_limit_s
    renewed_at = time.monotonic()
    if kind == "chat":
        for index in range(len(ids)):
            yield _data(chunk(kind, head, index, first=True))
    while cursors:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            yield SAID_ALL  # the jobs keep running
            yield _error(wait_limit_reached(ids, settings.openai_wait_limit_s))
            return
        if time.monotonic() - renewed_at > waits.STREAM_LEASE_S / 3:
            await lease.renew(waits.STREAM_LEASE_S)
            renewed_at = time.monotonic()
        reply = await client.xread(cursors, block=max(1, min(BLOCK_MS, left_ms)), count=500)
        for key, entries in events.read_streams(reply).items():
            for entry in entries:
                cursors[key] = entry.id
                if entry.kind == events.TOKEN and entry.text:
                    yield _data(chunk(kind, head, index_of[key], entry.text))
                elif entry.done:
                    cursors.pop(key)
                    break
        if not reply:
            # Nothing new: a job may have ended without a stream (e.g. Redis lost it).
            jobs = await run_in_threadpool(load_jobs, ids, caller.key_id)
            for key in list(cursors):
                job = jobs[index_of[key]]
                if job_queries.is_final(job.status) and events.stream_ended(
                    await client.xrevrange(key, count=1)
                ):
                    cursors.pop(key)
    yield SAID_ALL  # the jobs have ended
    jobs = await run_in_threadpool(load_jobs, ids, caller.key_id)
    failure = unsuccessful(jobs)
    if failure is not None:
        yield _error(failure)
        return
    for index, job in enumerate(jobs):
        yield _data(chunk(kind, head, index, finish_reason=job.finish_reason))
    if "usage" in head:  # the client asked for it
        yield _data(usage_chunk(head, jobs))
    yield {"data": "[DONE]"}
