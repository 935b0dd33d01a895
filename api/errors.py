"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
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


def install(app: FastAPI) -> None:
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

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc), kind="not-found", instance=request.url.path)

    @app.exception_handler(JobStateConflict)
    async def _conflict(request: Request, exc: JobStateConflict) -> JSONResponse:
        return problem(409, "Conflict", str(exc), kind="conflict", instance=request.url.path)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        metrics.REJECTIONS.labels("auth").inc()
        return problem(
            401,
            "Unauthorized",
            str(exc),
            kind="unauthorized",
            instance=request.url.path,
            headers={"WWW-Authenticate": "Bearer"},
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

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, "Forbidden", str(exc), kind="forbidden", instance=request.url.path)

    @app.exception_handler(KeyNotFound)
    async def _key_not_found(request: Request, exc: KeyNotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc), kind="not-found", instance=request.url.path)

    @app.exception_handler(QueueUnavailable)
    async def _unavailable(request: Request, exc: QueueUnavailable) -> JSONResponse:
        metrics.REJECTIONS.labels("queue_unavailable").inc()
        return problem(
            503,
            "Service unavailable",
            str(exc),
            kind="unavailable",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(CatalogError)
    async def _catalog(request: Request, exc: CatalogError) -> JSONResponse:
        return problem(500, "Catalog error", str(exc), kind="catalog", instance=request.url.path)

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
