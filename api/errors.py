"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmq import metrics
from llmq.errors import (
    BadRequest,
    BudgetExceeded,
    CatalogError,
    Forbidden,
    IdempotencyMismatch,
    InvalidField,
    InvalidFields,
    JobNotFound,
    JobStateConflict,
    KeyNotFound,
    QueueUnavailable,
    RateLimited,
    Unauthorized,
)

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    type_uri: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_uri or f"/problems/{kind}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


@dataclass(frozen=True)
class Simple:
    """How a domain error that needs nothing but its message becomes a problem."""

    status: int
    title: str
    kind: str
    rejection: str | None = None  # the llmq_rejections_total reason, when it counts as one
    headers: dict[str, str] | None = None


SIMPLE: dict[type[Exception], Simple] = {
    Unauthorized: Simple(
        401, "Unauthorized", "unauthorized", "auth", {"WWW-Authenticate": "Bearer"}
    ),
    Forbidden: Simple(403, "Forbidden", "forbidden"),
    JobNotFound: Simple(404, "Not found", "not-found"),
    KeyNotFound: Simple(404, "Not found", "not-found"),
    JobStateConflict: Simple(409, "Conflict", "conflict"),
    CatalogError: Simple(500, "Catalog error", "catalog"),
    QueueUnavailable: Simple(
        503, "Service unavailable", "unavailable", "queue_unavailable", {"Retry-After": "5"}
    ),
}


def _simple_handler(how: Simple):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if how.rejection:
            metrics.REJECTIONS.labels(how.rejection).inc()
        return problem(
            how.status, how.title, str(exc), kind=how.kind, instance=request.url.path,
            headers=how.headers,
        )  # fmt: skip

    return handle


def install(app: FastAPI) -> None:
    for exc_class, how in SIMPLE.items():
        app.add_exception_handler(exc_class, _simple_handler(how))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        metrics.REJECTIONS.labels("validation").inc()
        names = ", ".join(sorted({e["field"] for e in errors}))
        return problem(
            422,
            "Invalid request",
            f"invalid field(s): {names}",
            kind="validation-error",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(InvalidField)
    async def _invalid(request: Request, exc: InvalidField) -> JSONResponse:
        metrics.REJECTIONS.labels("validation").inc()
        return problem(
            422,
            "Invalid request",
            exc.message,
            kind="validation-error",
            instance=request.url.path,
            errors=[{"field": exc.field, "message": exc.message}],
        )

    @app.exception_handler(InvalidFields)
    async def _invalid_many(request: Request, exc: InvalidFields) -> JSONResponse:
        metrics.REJECTIONS.labels("validation").inc()
        names = ", ".join(e["field"] for e in exc.errors[:20])
        return problem(
            422,
            "Invalid request",
            f"invalid field(s): {names}",
            kind="validation-error",
            instance=request.url.path,
            errors=exc.errors,
        )

    @app.exception_handler(RateLimited)
    async def _rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        metrics.REJECTIONS.labels("rate_limit").inc()
        return problem(
            429,
            "Too many requests",
            str(exc),
            kind="quota-exceeded",
            type_uri=QUOTA_EXCEEDED,
            instance=request.url.path,
            headers={**exc.headers, "Retry-After": str(exc.retry_after_s)},
            extra={"violated-policies": [p for p in exc.policy.split(",") if p]},
        )

    @app.exception_handler(BudgetExceeded)
    async def _budget(request: Request, exc: BudgetExceeded) -> JSONResponse:
        metrics.REJECTIONS.labels("budget").inc()
        return problem(
            402,
            "Budget exceeded",
            str(exc),
            kind="budget-exceeded",
            instance=request.url.path,
            extra={"budget": exc.budget},
        )

    @app.exception_handler(IdempotencyMismatch)
    async def _idempotency(request: Request, exc: IdempotencyMismatch) -> JSONResponse:
        return problem(
            422,
            "Idempotency key reused",
            str(exc),
            kind="idempotency-key-reused",
            instance=request.url.path,
            errors=[{"field": "Idempotency-Key", "message": str(exc)}],
        )

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return problem(
            400,
            "Bad request",
            str(exc),
            kind="bad-request",
            instance=request.url.path,
            errors=[{"field": exc.field, "message": str(exc)}],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status_code, "http-error"
        )
        return problem(
            exc.status_code, str(exc.detail), str(exc.detail), kind=kind, instance=request.url.path
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(
            500,
            "Internal error",
            "an unexpected error occurred; it has been logged",
            kind="internal",
            instance=request.url.path,
        )
