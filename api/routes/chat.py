"""/v1/chat/completions and /v1/completions: OpenAI's routes, each request ordinary jobs.

The body becomes jobs (`llmq.openai_requests`), admitted like `POST /v1/jobs` (key, rates,
concurrency, budget, Idempotency-Key) onto the model's queue; the request then waits for
them: on their "done" messages (`api.waits.until_ended`), or reading their text as it comes
with `stream: true` (`api.openai_stream`). The answer is rendered from the job rows
(`llmq.openai_responses`) and names its jobs in `x-llmq-job-id`.

A client that leaves before its jobs end cancels them (`cancel_and_announce`, as
`POST /v1/jobs/{id}/cancel` does). After `LLMQ_OPENAI_WAIT_LIMIT_S` the answer is a 408 that
names the jobs, which keep running; it says `x-should-retry: false`, so the `openai` client
does not send the request again and make the jobs twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from api import deps, openai_stream, waits
from api.openapi import openai_responses
from api.routes.jobs import cancel_and_announce
from api.submission import Submission, check_total_tokens, submission
from llmq import job_queries
from llmq.catalog import Catalog
from llmq.errors import JobNotFound, JobStateConflict
from llmq.jobs import NewJob
from llmq.keys import Caller
from llmq.models import Job
from llmq.openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIRequest,
    chat_request_to_jobs,
    completion_request_to_jobs,
    max_tokens_field,
)
from llmq.openai_responses import (
    Kind,
    completion,
    unsuccessful,
    wait_interrupted,
    wait_limit_reached,
)
from llmq.settings import Settings

router = APIRouter(
    tags=["openai"],
    route_class=deps.KeyedRoute,
    responses=openai_responses(400, 401, 402, 404, 408, 409, 413, 429, 500, 503),
)
JOB_HEADER = "x-llmq-job-id"
ANSWER = {
    200: {
        "description": "The completion, or with `stream: true` server-sent chunks ending "
        "`data: [DONE]`",
        "content": {"application/json": {}, "text/event-stream": {}},
        "headers": {JOB_HEADER: {"description": "The request's job ids, in choice order",
                                 "schema": {"type": "string"}}},
    }
}  # fmt: skip
Convert = Callable[[OpenAIRequest, Catalog, int, str], list[NewJob]]


def cancel_unfinished(request: Request, ids: list[str], caller: Caller, settings: Settings) -> None:
    for job_id in ids:
        with contextlib.suppress(JobStateConflict, JobNotFound):  # it ended meanwhile
            cancel_and_announce(request, job_id, caller, settings)


async def cancel_shielded(request: Request, ids: list[str], caller: Caller, settings: Settings):
    """Cancel the jobs even while the request itself is being cancelled."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(cancel_unfinished, request, ids, caller, settings)


async def disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read: only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _admit(body: OpenAIRequest, convert: Convert, submission: Submission) -> list[str]:
    settings = submission.settings
    new_jobs = convert(
        body, submission.catalog, settings.max_prompt_chars, str(submission.caller.key_id)
    )
    prepared = [submission.reserve(new, max_tokens_field(body)) for new in new_jobs]
    check_total_tokens(prepared, submission.caller, "n")
    admitted = submission.admit(prepared, submission.claim(body))
    return [str(i) for i in admitted.ids]


async def wait_for_jobs(
    request: Request, ids: list[str], caller: Caller, settings: Settings
) -> list[Job] | None:
    """The jobs once they all ended; None when the client left first (the jobs are then
    cancelled). Raises WaitLimitReached past the limit."""
    result: list[Job] | None = None
    fault: Exception | None = None

    async def load() -> tuple[bool, list[Job]]:
        rows = await run_in_threadpool(openai_stream.load_jobs, ids, caller.key_id)
        return all(job_queries.is_final(job.status) for job in rows), rows

    async with anyio.create_task_group() as group:

        async def wait() -> None:
            nonlocal result, fault
            try:
                result = await waits.until_ended(
                    request.app.state.redis, settings.redis_prefix, ids, load,
                    settings.openai_wait_limit_s,
                )  # fmt: skip
            except openai_stream.WAIT_FAULTS as exc:  # raised below, not as a group
                fault = exc
            group.cancel_scope.cancel()

        async def watch() -> None:
            await disconnected(request)
            group.cancel_scope.cancel()

        group.start_soon(wait)
        group.start_soon(watch)
    if fault is not None:
        raise fault
    if result is None:
        await cancel_shielded(request, ids, caller, settings)
        return None
    if not all(job_queries.is_final(job.status) for job in result):
        raise wait_limit_reached(ids, settings.openai_wait_limit_s)
    return result


async def answer(
    kind: Kind, body: OpenAIRequest, convert: Convert, request: Request, submission: Submission
):
    caller, settings = submission.caller, submission.settings
    # The open wait is taken before any job exists: refused (429), the request made nothing.
    lease_s = waits.STREAM_LEASE_S if body.stream else (
        settings.openai_wait_limit_s + waits.LEASE_MARGIN_S
    )  # fmt: skip
    lease = await waits.acquire(
        request.app.state.redis, settings.redis_prefix, caller,
        settings.max_open_waits_per_key, lease_s,
    )  # fmt: skip
    try:
        ids = await run_in_threadpool(_admit, body, convert, submission)
        submission.response.headers[JOB_HEADER] = ",".join(ids)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def abandoned() -> None:
                await cancel_shielded(request, ids, caller, settings)

            chunks = openai_stream.chunks(
                kind, request, ids, caller, settings, include_usage, lease, abandoned
            )
            lease = None  # the stream releases it when it ends
            headers = dict(submission.response.headers)
            return EventSourceResponse(chunks, ping=15, headers=headers)
        try:
            jobs = await wait_for_jobs(request, ids, caller, settings)
        except openai_stream.WAIT_FAULTS:  # the jobs exist: never a plain, retried 503
            raise wait_interrupted(ids) from None
    finally:
        if lease is not None:
            await lease.release()
    if jobs is None:  # nobody is listening
        return {}
    failure = unsuccessful(jobs)
    if failure is not None:
        raise failure
    return completion(kind, jobs)


@router.post("/v1/chat/completions", responses=ANSWER)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, submission: Submission = Depends(submission)
):
    """OpenAI's chat completion: `n` jobs of the model, answered when they end."""
    return await answer("chat", body, chat_request_to_jobs, request, submission)


@router.post("/v1/completions", responses=ANSWER)
async def completions(
    body: CompletionRequest, request: Request, submission: Submission = Depends(submission)
):
    """OpenAI's (legacy) text completion: `n` jobs per prompt, answered when they end."""
    return await answer("text", body, completion_request_to_jobs, request, submission)
