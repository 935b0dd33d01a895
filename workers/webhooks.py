"""Webhook delivery: claim an outbox row, sign the body, POST it to a checked address, log it.

Each attempt re-resolves and re-checks the URL (`llmq.ssrf`) and connects to the address it
checked, keeping `Host` and TLS SNI set to the original name. Redirects are not followed, a
response is read up to a size cap and never stored, and the whole attempt runs under one
wall-clock deadline. Its outcome is recorded only while it is the delivery's latest attempt.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from cryptography.fernet import InvalidToken
from standardwebhooks import Webhook

from llmq import __version__, job_queries, keys, metrics, ssrf
from llmq.db import session_scope
from llmq.errors import KeyNotFound
from llmq.models import ApiKey, WebhookAttempt, WebhookDelivery
from llmq.resources import job_resource
from llmq.settings import Settings
from workers.webhook_policy import Step, next_step, parse_delays, parse_retry_after

log = logging.getLogger(__name__)
LEASE_GRACE_S = 60
SECRET_UNREADABLE = "secret cannot be decrypted"  # final: retrying cannot help


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    retry_after_s: float | None
    duration_ms: int


def batch_event(delivery: WebhookDelivery) -> dict:
    """OpenAI's thin event: the batch's id only; the receiver reads the batch itself."""
    return {
        "id": delivery.id,
        "object": "event",
        "type": delivery.event_type,
        "created_at": int(delivery.created_at.timestamp()),
        "data": {"id": delivery.batch_id},
    }


def render_payload(session, delivery: WebhookDelivery, settings: Settings) -> str:
    """The event body, fixed once: a batch's thin event, or a job's
    `{"type", "timestamp", "data": <final job resource>}`."""
    if delivery.batch_id is not None:
        return json.dumps(batch_event(delivery), separators=(",", ":"))
    job = job_queries.get_job(session, delivery.job_id, None)
    cost = job_queries.costs(session, [job.id]).get(job.id)
    body = {
        "type": delivery.event_type,
        "timestamp": (job.finished_at or datetime.now(UTC)).isoformat(),
        "data": job_resource(job, cost, settings.flower_url),
    }
    return json.dumps(body, separators=(",", ":"))


def sign_headers(msg_id: str, payload: str, secret: str, now: datetime) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
    }


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one loads the CA bundle, tens of ms of
    CPU that a fresh client per delivery would pay every time."""
    return httpx.create_ssl_context(trust_env=False)


async def _post(
    url: str, body: bytes, headers: dict[str, str], extensions: dict, settings: Settings
) -> tuple[int, str | None]:
    """POST and read the status, the headers and at most the size cap of the body."""
    async with (
        httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=tls_context(),
        ) as client,
        client.stream("POST", url, content=body, headers=headers, extensions=extensions) as resp,
    ):
        read = 0
        async for chunk in resp.aiter_raw():
            read += len(chunk)
            if read >= settings.webhook_max_response_bytes:
                break
        return resp.status_code, resp.headers.get("retry-after")


def send(
    target: ssrf.Target, msg_id: str, payload: str, secret: str, settings: Settings
) -> AttemptResult:
    """One POST under one wall-clock deadline, `webhook_timeout_s`, from connect to last byte.

    httpx's timeouts bound each read, not the whole exchange, so a receiver dripping a byte
    at a time would never time out; the request runs as a task that is cancelled at the
    deadline, which closes its connection.
    """
    started = time.monotonic()
    now = datetime.now(UTC)
    headers = sign_headers(msg_id, payload, secret, now) | {
        "content-type": "application/json",
        "user-agent": f"llmq-webhooks/{__version__}",
        "host": target.host_header,
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    url = target.pinned_url(target.addresses[0])

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    request = _post(url, payload.encode(), headers, extensions, settings)
    try:
        status, retry_after = asyncio.run(asyncio.wait_for(request, settings.webhook_timeout_s))
    except (TimeoutError, httpx.TimeoutException):
        return AttemptResult(None, "timeout", None, elapsed_ms())
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"connection error: {type(exc).__name__}", None, elapsed_ms())
    return AttemptResult(status, None, parse_retry_after(retry_after, now), elapsed_ms())


def _claim(session, delivery_id: str, settings: Settings) -> WebhookDelivery | None:
    lease = timedelta(seconds=settings.webhook_timeout_s + LEASE_GRACE_S)
    return session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= sa.func.now(),
        )
        .values(
            status="sending",
            attempts=WebhookDelivery.attempts + 1,
            lease_expires_at=sa.func.now() + lease,
        )
        .returning(WebhookDelivery)
    ).scalar_one_or_none()


@dataclass(frozen=True)
class Claimed:
    """What one attempt needs, read in the transaction that claimed the delivery."""

    delivery_id: str
    url: str
    payload: str
    secret: str | None  # None: the key's secret cannot be read, so nothing can be signed
    attempt: int


def claim(delivery_id: str, settings: Settings) -> Claimed | None:
    """Take a due, pending delivery for one attempt; None when another sender has it.

    The claim commits even when the key's secret cannot be decrypted (say, `LLMQ_SECRET_KEY`
    changed), so that failure is logged as an attempt instead of rolling back and coming
    round again forever.
    """
    with session_scope() as session:
        delivery = _claim(session, delivery_id, settings)
        if delivery is None:
            return None
        if delivery.payload is None:
            delivery.payload = render_payload(session, delivery, settings)
        key = session.get(ApiKey, delivery.api_key_id)
        try:
            secret = keys.webhook_secret(key)
        except (InvalidToken, KeyNotFound):
            log.error("webhook %s: the secret of key %s cannot be decrypted", delivery_id, key.id)
            secret = None
        return Claimed(delivery_id, delivery.url, delivery.payload, secret, delivery.attempts)


def attempt(claimed: Claimed, settings: Settings) -> tuple[AttemptResult, Step]:
    """Check the address again, POST, and decide what comes next."""
    if claimed.secret is None:
        return AttemptResult(None, SECRET_UNREADABLE, None, 0), Step("failed")
    try:
        target = ssrf.check_url(claimed.url, settings)
    except ssrf.UnsafeUrl as exc:
        result = AttemptResult(None, f"refused: {exc}", None, 0)
    else:
        result = send(target, claimed.delivery_id, claimed.payload, claimed.secret, settings)
    step = next_step(
        result.status_code,
        claimed.attempt,
        parse_delays(settings.webhook_retry_delays_s),
        settings.webhook_jitter,
        random.random(),
        result.retry_after_s,
    )
    return result, step


def record(claimed: Claimed, started_at: datetime, result: AttemptResult, step: Step) -> bool:
    """Log the attempt and move the delivery on; False when the delivery was not changed.

    The outcome is fenced by the attempt number: an attempt whose lease ran out while it was
    still sending, so that a newer attempt was claimed, is logged but decides nothing.
    """
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                delivery_id=claimed.delivery_id,
                attempt=claimed.attempt,
                started_at=started_at,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                error=result.error,
            )
        )
        changed = session.execute(
            sa.update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claimed.delivery_id,
                WebhookDelivery.status == "sending",
                WebhookDelivery.attempts == claimed.attempt,
            )
            .values(
                status=step.status,
                next_attempt_at=sa.func.now() + timedelta(seconds=step.delay_s),
                lease_expires_at=None,
                last_status_code=result.status_code,
                last_error=result.error,
                finished_at=None if step.status == "pending" else sa.func.now(),
            )
        ).rowcount
    return changed == 1


def deliver_once(delivery_id: str, settings: Settings) -> str:
    """One attempt of one delivery. Safe to call twice: only a due, pending row is claimed."""
    claimed = claim(delivery_id, settings)
    if claimed is None:
        return "skipped"
    started_at = datetime.now(UTC)
    result, step = attempt(claimed, settings)
    outcome = step.status if record(claimed, started_at, result, step) else "stale"
    metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
    log.info(
        "webhook %s attempt %d: %s %s -> %s",
        delivery_id,
        claimed.attempt,
        result.status_code,
        result.error or "",
        outcome,
    )
    return outcome


def due_deliveries(session, limit: int = 500) -> list[str]:
    """Rows to (re)send now: due pending rows, and rows whose sender died mid-attempt.

    A row handed out here is not handed out again for 30 s, so two sweeps do not race on it;
    the caller publishes only those with no message in the queue (`webhook_app.sweep`).
    """
    session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.status == "sending", WebhookDelivery.lease_expires_at < sa.func.now()
        )
        .values(status="pending", lease_expires_at=None)
    )
    due = (
        sa.select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= sa.func.now(),
            sa.or_(
                WebhookDelivery.lease_expires_at.is_(None),
                WebhookDelivery.lease_expires_at < sa.func.now(),
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return list(
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(lease_expires_at=sa.func.now() + timedelta(seconds=30))
            .returning(WebhookDelivery.id)
        ).scalars()
    )
