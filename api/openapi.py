"""What the OpenAPI spec says about answers other than a route's own success body.

Errors are RFC 9457 problem+json (`api/errors.py`), or OpenAI's envelope on the OpenAI-shaped
routes; routers and routes name the statuses they can answer with, and `responses` (or
`openai_responses`) documents each one the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from api.errors import PROBLEM


class Problem(BaseModel):
    """RFC 9457 problem details; some kinds add members (`violated-policies`, `budget`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = None  # {"field": ..., "message": ...}


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope; `job_ids` is added when the request's jobs exist."""

    error: OpenAIErrorDetail


WHY: dict[int, str] = {
    400: "A body that is not JSON, or a malformed header (e.g. `Idempotency-Key`)",
    401: "Missing, unknown or revoked API key",
    402: "The job's worst-case cost exceeds what is left of the key's budget",
    403: "The route needs an admin key",
    404: "No such resource for this key",
    408: "The jobs did not end within LLMQ_OPENAI_WAIT_LIMIT_S; they keep running (see job_ids)",
    409: "The resource's state does not allow this",
    413: "Request body too large",
    422: "Invalid request; `errors` names each field",
    429: "Over the key's rate or concurrency limit; see `Retry-After`",
    500: "The job failed (see job_ids), or an unexpected error",
    503: "A dependency (queue, rate limiter, database) is unavailable; retry later",
}
_SCHEMA = Problem.model_json_schema()
OPENAI_WHY = WHY | {
    400: "Invalid or unsupported parameter, or a body that is not JSON; `param` names it",
    404: "Unknown model, or no such resource for this key",
    409: "A job ended cancelled or expired before its result (see job_ids)",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries for these error statuses, all problem+json."""
    return {
        status: {"description": WHY[status], "content": {PROBLEM: {"schema": _SCHEMA}}}
        for status in statuses
    }


def openai_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same, for routes that answer errors in OpenAI's envelope (application/json)."""
    return {
        status: {"description": OPENAI_WHY[status], "model": OpenAIError} for status in statuses
    }
