"""Pure decisions of the remote (`openai`) engine: which upstream failures are worth another
try, how long to wait before it, and the error code a job ends with.

The codes are stable (`upstream_timeout`, `upstream_rate_limited`, `upstream_error`,
`upstream_rejected`), so whatever counts a backend's failures can read them from the job.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is capped, so one job cannot park a worker
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0


@dataclass
class UpstreamFailure(Exception):
    """One upstream attempt that did not produce an answer."""

    code: str
    message: str
    retryable: bool
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def for_status(status: int, detail: str, headers: Mapping[str, str]) -> UpstreamFailure:
    """The failure an HTTP error status from upstream stands for."""
    if status == 429:
        code = "upstream_rate_limited"
    elif status == 408 or status == 504:
        code = "upstream_timeout"
    elif status >= 500 or status == 409:
        code = "upstream_error"
    else:  # a bad request, key or model: the same request would fail the same way again
        code = "upstream_rejected"
    return UpstreamFailure(
        code,
        f"upstream answered {status}: {detail}"[:500],
        status in RETRY_STATUSES,
        retry_after_s(headers),
    )


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the upstream asked us to wait (`Retry-After`: seconds or an HTTP date), capped;
    None when it did not say or said something unreadable."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_s(failure: UpstreamFailure, attempt: int, jitter: float) -> float:
    """Wait before try `attempt + 1`: the upstream's Retry-After when given, else exponential
    back-off (0.5 s, 1 s, 2 s … up to 8 s) plus up to `jitter` seconds of spread."""
    if failure.retry_after_s is not None:
        return failure.retry_after_s
    return min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1)) + jitter


def finish_reason(upstream: str | None) -> str:
    """llmq's finish reasons are stop, length and cancelled; anything else upstream says
    (content_filter, tool_calls, none at all) ended the text on its own: stop."""
    return "length" if upstream == "length" else "stop"
