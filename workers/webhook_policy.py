"""What to do after a webhook attempt: pure, so the schedule is table-tested.

Standard Webhooks etiquette: 2xx is delivered; 410 Gone stops at once; anything else
(3xx included, since redirects are never followed) is retried on the schedule with jitter,
no sooner than a `Retry-After` the receiver sent, until the schedule runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER_S = 86_400.0


@dataclass(frozen=True)
class Step:
    status: str  # delivered | failed | pending
    delay_s: float = 0.0


def parse_delays(spec: str) -> list[float]:
    return [float(part) for part in spec.split(",") if part.strip()]


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit also takes "²", which float refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_step(
    status_code: int | None,
    attempts_made: int,
    delays_s: list[float],
    jitter: float,
    unit_random: float,
    retry_after_s: float | None = None,
) -> Step:
    """`unit_random` in [0, 1) spreads the delay by ±`jitter` of itself."""
    if status_code is not None and 200 <= status_code < 300:
        return Step("delivered")
    if status_code == 410:
        return Step("failed")
    if attempts_made > len(delays_s):
        return Step("failed")
    base = delays_s[attempts_made - 1]
    delay = base * (1 + jitter * (2 * unit_random - 1))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return Step("pending", max(0.0, delay))
