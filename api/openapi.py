"""What the OpenAPI spec says about answers other than a route's own success body.

Every error is RFC 9457 problem+json (`api/errors.py`); routers and routes name the statuses
they can answer with, and `responses` documents each one the same way.
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


WHY: dict[int, str] = {
    400: "A body that is not JSON, or a malformed header (e.g. `Idempotency-Key`)",
    401: "Missing, unknown or revoked API key",
    402: "The job's worst-case cost exceeds what is left of the key's budget",
    403: "The route needs an admin key",
    404: "No such resource for this key",
    409: "The resource's state does not allow this",
    413: "Request body too large",
    422: "Invalid request; `errors` names each field",
    429: "Over the key's rate or concurrency limit; see `Retry-After`",
    503: "A dependency (queue, rate limiter, database) is unavailable; retry later",
}
_SCHEMA = Problem.model_json_schema()


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries for these error statuses, all problem+json."""
    return {
        status: {"description": WHY[status], "content": {PROBLEM: {"schema": _SCHEMA}}}
        for status in statuses
    }
