"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from api.fields import validation_errors
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
UNAVAILABLE_RETRY_AFTER_S = 5

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


def too_large(limit_bytes: int, instance: str) -> JSONResponse:
    return problem(
        413, "Request too large", f"body exceeds {limit_bytes} bytes", kind="too-large",
        instance=instance,
    )  # fmt: skip


def unavailable(what: str, instance: str) -> JSONResponse:
    """503 for a backing service that did not answer; names no host, port or URL."""
    return problem(
        503,
        "Service unavailable",
        f"{what} is unavailable; retry shortly",
        kind="unavailable",
        instance=instance,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


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
        errors = validation_errors(exc)
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
        if exc.status_code == 413 and MAX_BODY_SIZE_SCOPE_KEY in request.scope:
            metrics.REJECTIONS.labels("too_large").inc()
            return too_large(request.scope[MAX_BODY_SIZE_SCOPE_KEY], request.url.path)
        kind = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status_code, "http-error"
        )
        return problem(
            exc.status_code, str(exc.detail), str(exc.detail), kind=kind, instance=request.url.path
        )

    @app.exception_handler(sqlalchemy.exc.DBAPIError)
    async def _database(request: Request, exc: sqlalchemy.exc.DBAPIError) -> JSONResponse:
        if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
            exc.connection_invalidated
        ):
            return _unavailable("the database", exc, request)
        # The driver's message may quote the data it refused (a prompt): log only its kind.
        sqlstate = getattr(getattr(exc.orig, "diag", None), "sqlstate", None)
        log.error(
            "database error on %s: %s (SQLSTATE %s)",
            request.url.path, type(exc.orig).__name__, sqlstate,
        )  # fmt: skip
        return _internal(request)

    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    async def _database_pool(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable("the database", exc, request)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable("Redis", exc, request)

    @app.exception_handler(kombu.exceptions.OperationalError)
    async def _broker(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable("the queue", exc, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _internal(request)


def _unavailable(what: str, exc: BaseException, request: Request) -> JSONResponse:
    cause = getattr(exc, "orig", None) or exc
    log.warning(
        "%s unavailable on %s: %s: %s",
        what, request.url.path, type(cause).__name__, _first_line(cause),
    )  # fmt: skip
    metrics.REJECTIONS.labels("unavailable").inc()
    return unavailable(what, request.url.path)


def _internal(request: Request) -> JSONResponse:
    return problem(
        500,
        "Internal error",
        "an unexpected error occurred; it has been logged",
        kind="internal",
        instance=request.url.path,
    )
