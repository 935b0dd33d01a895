"""GET /v1/jobs/{id}/events: server-sent events with the job's text as it is generated.

Events: `token` (`{"text": …}`, with the stream entry id as the SSE id) as the worker produces
text, then one `job` event with the final job resource, then the stream closes. The text is
replayed from a per-job Redis stream, so a client that connects late, or reconnects with
`Last-Event-ID`, misses nothing. An open stream counts against the key's cap on open waits
(`api.waits`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from api import deps, waits
from api.openapi import responses
from api.routes.jobs import load_job
from llmq import events, job_queries
from llmq.errors import InvalidField
from llmq.keys import Caller
from llmq.settings import Settings

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 422, 503),
)

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# How long one read waits before the job row is checked again: well under the client's
# socket timeout (redis-py's default is 5 s), or the wait itself would fail as a timeout.
BLOCK_MS = 3000


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=responses(404, 429))
async def job_events(
    job_id: str,
    request: Request,
    last_event_id: str | None = Header(None),
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
) -> EventSourceResponse:
    if last_event_id is not None and not STREAM_ID.match(last_event_id):
        raise InvalidField(
            "Last-Event-ID", "must be an event id this stream sent (e.g. 1700000000000-0)"
        )
    status, resource = await run_in_threadpool(load_job, job_id, caller, settings)
    client: aioredis.Redis = request.app.state.redis
    key = events.stream_key(settings.redis_prefix, resource["id"])
    lease = await waits.acquire(
        client, settings.redis_prefix, caller, settings.max_open_waits_per_key,
        waits.STREAM_LEASE_S,
    )  # fmt: skip

    async def stream() -> AsyncIterator[dict]:
        nonlocal status, resource
        cursor = last_event_id or "0-0"
        renewed_at = time.monotonic()
        try:
            while True:
                if time.monotonic() - renewed_at > waits.STREAM_LEASE_S / 3:
                    await lease.renew(waits.STREAM_LEASE_S)
                    renewed_at = time.monotonic()
                reply = await client.xread({key: cursor}, block=BLOCK_MS, count=500)
                entries = events.read_entries(reply)
                for entry in entries:
                    cursor = entry.id
                    if entry.kind == events.TOKEN:
                        data = json.dumps({"text": entry.text})
                        yield {"event": "token", "id": cursor, "data": data}
                    elif entry.done:
                        status, resource = await run_in_threadpool(
                            load_job, job_id, caller, settings
                        )
                        yield {"event": "job", "data": json.dumps(resource)}
                        return
                if not entries:
                    # Nothing new: the job may have ended without a stream (e.g. Redis lost it),
                    # or the client resumed after the stream's end.
                    status, resource = await run_in_threadpool(load_job, job_id, caller, settings)
                    if job_queries.is_final(status) and events.stream_ended(
                        await client.xrevrange(key, count=1)
                    ):
                        yield {"event": "job", "data": json.dumps(resource)}
                        return
        finally:
            await lease.release()

    return EventSourceResponse(stream(), ping=15)
