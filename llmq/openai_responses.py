"""OpenAI's response shapes, rendered from finished job rows: `chat.completion`,
`text_completion`, their stream chunks, and the error envelope.

Pure, with no HTTP: the chat routes and a batch's output file render the same body from the
same jobs. A response's id is its first job's id behind OpenAI's prefix (`chatcmpl-<job id>`),
so the answer leads to the job in `/v1/jobs`, Flower and the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from llmq.errors import JobFailed, JobNotDone, JobStopped, WaitInterrupted, WaitLimitReached
from llmq.models import Job, JobStatus

Kind = Literal["chat", "text"]
PREFIX: dict[str, str] = {"chat": "chatcmpl-", "text": "cmpl-"}
OBJECT: dict[str, str] = {"chat": "chat.completion", "text": "text_completion"}
CHUNK_OBJECT: dict[str, str] = {"chat": "chat.completion.chunk", "text": "text_completion"}


def response_id(kind: Kind, job_id: object) -> str:
    return f"{PREFIX[kind]}{job_id}"


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(jobs: Sequence[Job]) -> dict[str, int]:
    """Token totals of the jobs, each counted as the ledger charges it: every choice is a
    job that read its prompt, so `n` choices count the prompt `n` times."""
    prompt = sum(job.prompt_tokens or 0 for job in jobs)
    completion = sum(job.completion_tokens or 0 for job in jobs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _choice(kind: Kind, index: int, job: Job) -> dict[str, Any]:
    text = job.output_text or ""
    if kind == "chat":
        message = {"role": "assistant", "content": text, "refusal": None}
        return {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": job.finish_reason,
        }
    return {"text": text, "index": index, "logprobs": None, "finish_reason": job.finish_reason}


def completion(kind: Kind, jobs: Sequence[Job]) -> dict[str, Any]:
    """The whole response of finished jobs, one choice per job in their order."""
    first = jobs[0]
    return {
        "id": response_id(kind, first.id),
        "object": OBJECT[kind],
        "created": int(first.created_at.timestamp()),
        "model": first.model,
        "choices": [_choice(kind, index, job) for index, job in enumerate(jobs)],
        "usage": usage(jobs),
        "system_fingerprint": None,
    }


def chunk(
    kind: Kind,
    head: dict[str, Any],
    index: int,
    text: str | None = None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One stream chunk for choice `index`: some text, or the choice's end. `head` holds what
    every chunk of the response repeats (see `chunk_head`)."""
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text is not None:
            delta["content"] = text
        body = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        body = {
            "text": text or "",
            "index": index,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    return {**head, "choices": [body]}


def chunk_head(kind: Kind, first: Job, include_usage: bool) -> dict[str, Any]:
    head = {
        "id": response_id(kind, first.id),
        "object": CHUNK_OBJECT[kind],
        "created": int(first.created_at.timestamp()),
        "model": first.model,
        "system_fingerprint": None,
    }
    return head | ({"usage": None} if include_usage else {})


def usage_chunk(head: dict[str, Any], jobs: Sequence[Job]) -> dict[str, Any]:
    """The last chunk when the client asked for usage: no choices, the totals."""
    return {**head, "choices": [], "usage": usage(jobs)}


def unsuccessful(jobs: Sequence[Job]) -> JobNotDone | None:
    """Why finished jobs have no response: the first that ended without succeeding, as the
    error to answer with (it names the job, which stays readable), or None."""
    ids = [str(job.id) for job in jobs]
    for job in jobs:
        if job.status == JobStatus.SUCCEEDED:
            continue
        if job.status == JobStatus.FAILED:
            error = job.error or {}
            return JobFailed(
                f"job {job.id} failed: {error.get('message', 'no reason given')}",
                ids,
                str(error.get("code", "job_failed")),
            )
        return JobStopped(
            f"job {job.id} ended {job.status} before it finished", ids, f"job_{job.status}"
        )
    return None


def wait_limit_reached(job_ids: list[str], limit_s: float) -> WaitLimitReached:
    return WaitLimitReached(
        f"job(s) {', '.join(job_ids)} did not finish within {limit_s:g} s; they keep running: "
        "read them at GET /v1/jobs/{id}",
        job_ids,
        "wait_limit_exceeded",
    )


def wait_interrupted(job_ids: list[str]) -> WaitInterrupted:
    return WaitInterrupted(
        f"lost Redis or Postgres while waiting for job(s) {', '.join(job_ids)}; they go on: "
        "read them at GET /v1/jobs/{id}",
        job_ids,
        "wait_interrupted",
    )
