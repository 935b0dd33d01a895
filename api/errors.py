"""Every error the API returns, from one mapping: RFC 9457 problem+json, or OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}` on the OpenAI-shaped routes (`OPENAI_PATHS`),
with the status that makes the `openai` client raise the matching exception."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
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
from api.openai_errors import openai_error, speaks_openai
from llmq import metrics
from llmq.errors import (
    BadRequest,
    BatchNotFound,
    BudgetExceeded,
    CatalogError,
    FileNotFound,
    Forbidden,
    IdempotencyMismatch,
    InvalidField,
    InvalidFields,
    JobFailed,
    JobNotDone,
    JobNotFound,
    JobStateConflict,
    JobStopped,
    KeyNotFound,
    QueueUnavailable,
    RateLimited,
    TooLarge,
    Unauthorized,
    UnknownModel,
    UnsupportedParameter,
    WaitInterrupted,
    WaitLimitReached,
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


def render(
    path: str,
    status: int,
    title: str,
    detail: str,
    *,
    kind: str,
    openai_status: int | None = None,
    code: str | None = None,
    errors: list[dict[str, str]] | None = None,
    **fields: Any,
) -> JSONResponse:
    """The answer to an error on `path`, in the shape its route speaks. OpenAI answers an
    invalid request with 400 (the client's BadRequestError) where llmq's own routes say 422;
    `param` is the first field at fault."""
    if not speaks_openai(path):
        return problem(status, title, detail, kind=kind, instance=path, errors=errors, **fields)
    fields.pop("type_uri", None)
    if errors and [e["message"] for e in errors] != [detail]:  # each field and its fault
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:10])
    return openai_error(
        openai_status or (400 if status == 422 else status),
        detail,
        param=errors[0]["field"] if errors else None,
        code=code or kind.replace("-", "_"),
        **fields,
    )


def too_large(limit_bytes: int, instance: str) -> JSONResponse:
    return render(
        instance, 413, "Request too large", f"body exceeds {limit_bytes} bytes", kind="too-large"
    )


def unavailable(what: str, instance: str) -> JSONResponse:
    """503 for a backing service that did not answer; names no host, port or URL."""
    return render(
        instance,
        503,
        "Service unavailable",
        f"{what} is unavailable; retry shortly",
        kind="unavailable",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


@dataclass(frozen=True)
class Rule:
    """How a domain error becomes a problem: fixed fields, and what the error adds of its own
    (`more` returns further `problem` arguments: errors, headers, extra members)."""

    status: int
    title: str
    kind: str
    rejection: str | None = None  # the llmq_rejections_total reason, when it counts as one
    headers: dict[str, str] | None = None
    type_uri: str | None = None
    detail: Callable[[Any], str] = str
    more: Callable[[Any], dict[str, Any]] = lambda exc: {}
    openai_status: int | None = None  # where OpenAI's routes answer with another status


def _names(fields: Iterable[str]) -> str:
    return f"invalid field(s): {', '.join(fields)}"


def _field_error(field: str, message: str) -> dict[str, Any]:
    return {"errors": [{"field": field, "message": message}]}


def _not_done_fields(exc: JobNotDone) -> dict[str, Any]:
    """The jobs exist: the client must not send the request again (`x-should-retry`, which
    the `openai` client obeys), but read them."""
    return {
        "code": exc.code,
        "headers": {"x-should-retry": "false", "x-llmq-job-id": ",".join(exc.job_ids)},
        "extra": {"job_ids": exc.job_ids},
    }


def _rate_limit_fields(exc: RateLimited) -> dict[str, Any]:
    return {
        "headers": {**exc.headers, "Retry-After": str(exc.retry_after_s)},
        "extra": {"violated-policies": [p for p in exc.policy.split(",") if p]},
    }


INVALID = Rule(422, "Invalid request", "validation-error", "validation")
RULES: dict[type[Exception], Rule] = {
    Unauthorized: Rule(401, "Unauthorized", "unauthorized", "auth", {"WWW-Authenticate": "Bearer"}),
    Forbidden: Rule(403, "Forbidden", "forbidden"),
    JobNotFound: Rule(404, "Not found", "not-found"),
    KeyNotFound: Rule(404, "Not found", "not-found"),
    FileNotFound: Rule(404, "Not found", "not-found", detail=lambda exc: "no such file"),
    BatchNotFound: Rule(404, "Not found", "not-found", detail=lambda exc: "no such batch"),
    TooLarge: Rule(413, "Request too large", "too-large", "too_large"),
    JobStateConflict: Rule(409, "Conflict", "conflict"),
    CatalogError: Rule(500, "Catalog error", "catalog"),
    QueueUnavailable: Rule(
        503, "Service unavailable", "unavailable", "queue_unavailable", {"Retry-After": "5"}
    ),
    RequestValidationError: replace(
        INVALID,
        detail=lambda exc: _names(sorted({e["field"] for e in validation_errors(exc)})),
        more=lambda exc: {"errors": validation_errors(exc)},
    ),
    InvalidField: replace(
        INVALID,
        detail=lambda exc: exc.message,
        more=lambda exc: _field_error(exc.field, exc.message),
    ),
    UnknownModel: replace(
        INVALID,
        openai_status=404,
        detail=lambda exc: exc.message,
        more=lambda exc: _field_error(exc.field, exc.message) | {"code": "model_not_found"},
    ),
    UnsupportedParameter: replace(
        INVALID,
        detail=lambda exc: exc.message,
        more=lambda exc: _field_error(exc.field, exc.message) | {"code": "unsupported_parameter"},
    ),
    WaitLimitReached: Rule(408, "Request timeout", "wait-limit", more=_not_done_fields),
    JobStopped: Rule(409, "Conflict", "job-stopped", more=_not_done_fields),
    WaitInterrupted: Rule(503, "Service unavailable", "wait-interrupted", more=_not_done_fields),
    JobFailed: Rule(500, "Job failed", "job-failed", more=_not_done_fields),
    InvalidFields: replace(
        INVALID,
        detail=lambda exc: _names(e["field"] for e in exc.errors[:20]),
        more=lambda exc: {"errors": exc.errors},
    ),
    RateLimited: Rule(
        429,
        "Too many requests",
        "quota-exceeded",
        "rate_limit",
        type_uri=QUOTA_EXCEEDED,
        more=_rate_limit_fields,
    ),
    BudgetExceeded: Rule(
        402,
        "Budget exceeded",
        "budget-exceeded",
        "budget",
        more=lambda exc: {"extra": {"budget": exc.budget}},
    ),
    IdempotencyMismatch: Rule(
        422,
        "Idempotency key reused",
        "idempotency-key-reused",
        more=lambda exc: _field_error("Idempotency-Key", str(exc)),
    ),
    BadRequest: Rule(
        400, "Bad request", "bad-request", more=lambda exc: _field_error(exc.field, str(exc))
    ),
}


def _handler(rule: Rule):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if rule.rejection:
            metrics.REJECTIONS.labels(rule.rejection).inc()
        fields = {"headers": rule.headers, "type_uri": rule.type_uri, **rule.more(exc)}
        return render(
            request.url.path, rule.status, rule.title, rule.detail(exc), kind=rule.kind,
            openai_status=rule.openai_status, **fields,
        )  # fmt: skip

    return handle


def install(app: FastAPI) -> None:
    for exc_class, rule in RULES.items():
        app.add_exception_handler(exc_class, _handler(rule))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413 and MAX_BODY_SIZE_SCOPE_KEY in request.scope:
            metrics.REJECTIONS.labels("too_large").inc()
            return too_large(request.scope[MAX_BODY_SIZE_SCOPE_KEY], request.url.path)
        kind = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status_code, "http-error"
        )
        return render(
            request.url.path, exc.status_code, str(exc.detail), str(exc.detail), kind=kind
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
    return render(
        request.url.path,
        500,
        "Internal error",
        "an unexpected error occurred; it has been logged",
        kind="internal",
    )
