"""OpenAI's error envelope, and which routes answer with it (`api.errors.render` picks).

The status decides the exception the `openai` client raises (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError...), `type` is OpenAI's word for the
kind of error, `param` the field at fault, `code` a stable name for the case.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from llmq.openai_responses import error_body

# Routes that answer in OpenAI's shapes, errors included (a path or a path under it).
OPENAI_PATHS = (
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/files", "/v1/batches",
)  # fmt: skip
OPENAI_TYPES = {401: "authentication_error", 402: "insufficient_quota", 403: "permission_error",
                408: "timeout", 429: "rate_limit_error"}  # fmt: skip


def speaks_openai(path: str) -> bool:
    return any(path == p or path.startswith(f"{p}/") for p in OPENAI_PATHS)


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = error_body(message, kind, param, code)
    body["error"].update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers)
