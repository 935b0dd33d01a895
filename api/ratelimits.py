"""Per-key request and token rates for the API: the Redis limiter plus its HTTP headers.

When the limiter's Redis does not answer, `LLMQ_RATE_LIMIT_FAIL_OPEN` decides: admit the
request (default; counted in `llmq_rate_limit_errors_total` for alerting) or refuse it with
503. Concurrency limits and budgets are kept in Postgres and hold either way.
"""

from __future__ import annotations

import logging

import redis
from fastapi import Request

from llmq import metrics, ratelimit
from llmq.errors import QueueUnavailable, RateLimited
from llmq.keys import Caller

log = logging.getLogger(__name__)


def rpm_rules(caller: Caller) -> list[ratelimit.Rule]:
    """One request against the key's requests per minute, and nothing else."""
    rpm = caller.limits.rpm
    return [] if rpm is None else [ratelimit.Rule("rpm", rpm, 1)]


def rules(caller: Caller, tokens: int) -> list[ratelimit.Rule]:
    out = rpm_rules(caller)
    if caller.limits.tpm is not None:
        out.append(ratelimit.Rule("tpm", caller.limits.tpm, tokens))
    return out


def enforce(request: Request, caller: Caller, tokens: int) -> dict[str, str]:
    """Charge one request and `tokens` tokens; returns the RateLimit headers to send."""
    return enforce_rules(request, caller, rules(caller, tokens), caller.limits.max_concurrent)


def enforce_rules(
    request: Request,
    caller: Caller,
    chosen: list[ratelimit.Rule],
    max_concurrent: int | None = None,
) -> dict[str, str]:
    """Charge `chosen` to the caller's key; 429 (`RateLimited`) when one of them refuses."""
    if not chosen:
        return {}
    settings = request.app.state.settings
    policy = ratelimit.policy_header(chosen, max_concurrent)
    try:
        verdict = ratelimit.admit(
            request.app.state.limit_redis, settings.redis_prefix, caller.key_id, chosen
        )
    except redis.RedisError as exc:
        metrics.RATE_LIMIT_ERRORS.inc()
        if settings.rate_limit_fail_open:
            log.warning("rate limiter unreachable, admitting the request: %s", exc)
            return {"RateLimit-Policy": policy}
        raise QueueUnavailable("the rate limiter is unavailable; retry shortly") from exc
    headers = {"RateLimit-Policy": policy, "RateLimit": ratelimit.state_header(verdict)}
    if not verdict.allowed:
        violated = [r.name for r in chosen if verdict.remaining[r.name] < r.cost]
        raise RateLimited(
            f"over this key's {' and '.join(violated) or 'rate'} limit",
            retry_after_s=verdict.retry_after_s,
            headers=headers,
            policy=",".join(violated),
        )
    return headers


def refund_tokens(request: Request, caller: Caller, tokens: int) -> None:
    """Give back tokens charged for a request that did not become a job."""
    if caller.limits.tpm is None or not tokens:
        return
    settings = request.app.state.settings
    try:
        ratelimit.reconcile_tokens(
            request.app.state.limit_redis, settings.redis_prefix, caller.key_id, -tokens
        )
    except redis.RedisError:
        metrics.RATE_LIMIT_ERRORS.inc()
