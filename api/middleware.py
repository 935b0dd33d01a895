"""Request metrics and the body-size limit, as plain ASGI middleware.

Starlette's `BaseHTTPMiddleware` runs every request through an extra task and a wrapped
response stream; a plain ASGI callable costs one function call.

The body limit holds whatever the headers say: a declared `Content-Length` over the limit is
refused before anything is read, and the bytes of every body (chunked or not) are counted as
they arrive, so reading stops with a 413 as soon as the count passes the limit.
"""

from __future__ import annotations

import time

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.routes import files
from llmq import metrics
from llmq.settings import Settings


def body_limit_bytes(settings: Settings, method: str, path: str) -> int:
    """Uploads and bulk submits get their own, larger limits."""
    if method == "POST" and path == files.PREFIX:
        return files.upload_limit_bytes(settings)
    if path.endswith("/bulk"):
        return settings.max_bulk_request_bytes
    return settings.max_request_bytes


class RequestMetrics:
    """Count and time every request by route; refuse a body over the limit."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = body_limit_bytes(self.settings, method, path)
        length = Headers(scope=scope).get("content-length")
        if length and length.isdigit() and int(length) > limit:
            metrics.REJECTIONS.labels("too_large").inc()
            metrics.HTTP_REQUESTS.labels("unmatched", method, "413").inc()
            await errors.too_large(limit, path)(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            # Counts the body as the app reads it and raises a 413 HTTPException past `limit`.
            await RequestBodyLimitResponder(self.app, limit)(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # set by the router
            metrics.HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
