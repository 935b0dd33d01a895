"""Refuse requests whose header section is too large or has too many fields (431).

The HTTP parser (httptools under uvicorn) puts no bound on headers, so without this a 1 MiB
cookie or ten thousand header lines reach every route. The parser has already read them by
the time the app sees the request: a proxy in front bounds the memory; this bounds the work
and answers with a problem+json instead of whatever the route would have said.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors
from llmq import metrics
from llmq.settings import Settings


def header_excess(headers: list[tuple[bytes, bytes]], max_bytes: int, max_count: int) -> str | None:
    """What is over a limit, in words, or None."""
    if len(headers) > max_count:
        return f"{len(headers)} header fields; at most {max_count}"
    size = sum(len(name) + len(value) + 4 for name, value in headers)  # "name: value\r\n"
    if size > max_bytes:
        return f"{size} bytes of headers; at most {max_bytes}"
    return None


class HeaderLimits:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            excess = header_excess(
                scope["headers"], self.settings.max_header_bytes, self.settings.max_header_count
            )
            if excess:
                metrics.REJECTIONS.labels("too_large").inc()
                metrics.HTTP_REQUESTS.labels("unmatched", scope["method"], "431").inc()
                response = errors.render(
                    scope["path"], 431, "Request header fields too large", excess,
                    kind="too-large",
                )  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
