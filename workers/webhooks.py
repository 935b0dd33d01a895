"""Webhook delivery: claim an outbox row, sign the body, POST it to a checked address, log it.

Each attempt re-resolves and re-checks the URL (`llmq.ssrf`) and connects to the address it
checked, keeping `Host` and TLS SNI set to the original name. Redirects are not followed, a
response is read up to a size cap and never stored, and the whole attempt has a time limit.
"""

from __future__ import annotations

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
from standardwebhooks import Webhook

from llmq import __version__, jobs, keys, metrics, ssrf
from llmq.db import session_scope
from llmq.models import ApiKey, LedgerEntry, WebhookAttempt, WebhookDelivery
from llmq.resources import job_resource
from llmq.settings import Settings
from workers.webhook_policy import next_step, parse_delays, parse_retry_after

log = logging.getLogger(__name__)
LEASE_GRACE_S = 60


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    retry_after_s: float | None
    duration_ms: int


def render_payload(session, delivery: WebhookDelivery, settings: Settings) -> str:
    """The event body: `{"type", "timestamp", "data": <final job resource>}`, fixed once."""
    job = jobs.get_job(session, delivery.job_id, None)
    cost = session.execute(
        sa.select(LedgerEntry.cost_usd, LedgerEntry.gpu_cost_usd).where(
            LedgerEntry.job_id == job.id
        )
    ).first()
    body = {
        "type": delivery.event_type,
        "timestamp": (job.finished_at or datetime.now(UTC)).isoformat(),
        "data": job_resource(job, tuple(cost) if cost else None, settings.flower_url),
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


def send(target: ssrf.Target, msg_id: str, payload: str, secret: str, settings: Settings):
    started = time.monotonic()
    now = datetime.now(UTC)
    headers = sign_headers(msg_id, payload, secret, now) | {
        "content-type": "application/json",
        "user-agent": f"llmq-webhooks/{__version__}",
        "host": target.host_header,
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    deadline = started + settings.webhook_timeout_s

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        with (
            httpx.Client(
                timeout=settings.webhook_timeout_s,
                follow_redirects=False,
                trust_env=False,
                verify=tls_context(),
            ) as client,
            client.stream(
                "POST",
                target.pinned_url(target.addresses[0]),
                content=payload.encode(),
                headers=headers,
                extensions=extensions,
            ) as response,
        ):
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes or time.monotonic() > deadline:
                    break
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
            return AttemptResult(response.status_code, None, retry_after, elapsed_ms())
    except httpx.TimeoutException:
        return AttemptResult(None, "timeout", None, elapsed_ms())
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"connection error: {type(exc).__name__}", None, elapsed_ms())


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


def deliver_once(delivery_id: str, settings: Settings) -> str:
    """One attempt of one delivery. Safe to call twice: only a due, pending row is claimed."""
    with session_scope() as session:
        delivery = _claim(session, delivery_id, settings)
        if delivery is None:
            return "skipped"
        if delivery.payload is None:
            delivery.payload = render_payload(session, delivery, settings)
        key = session.get(ApiKey, delivery.api_key_id)
        secret = keys.webhook_secret(key)
        url, payload, attempt = delivery.url, delivery.payload, delivery.attempts
    started_at = datetime.now(UTC)
    try:
        target = ssrf.check_url(url, settings)
    except ssrf.UnsafeUrl as exc:
        result = AttemptResult(None, f"refused: {exc}", None, 0)
    else:
        result = send(target, delivery_id, payload, secret, settings)
    step = next_step(
        result.status_code,
        attempt,
        parse_delays(settings.webhook_retry_delays_s),
        settings.webhook_jitter,
        random.random(),
        result.retry_after_s,
    )
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempt=attempt,
                started_at=started_at,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                error=result.error,
            )
        )
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "sending")
            .values(
                status=step.status,
                next_attempt_at=sa.func.now() + timedelta(seconds=step.delay_s),
                lease_expires_at=None,
                last_status_code=result.status_code,
                last_error=result.error,
                finished_at=None if step.status == "pending" else sa.func.now(),
            )
        )
    metrics.WEBHOOK_ATTEMPTS.labels(step.status).inc()
    log.info(
        "webhook %s attempt %d: %s -> %s", delivery_id, attempt, result.status_code, step.status
    )
    return step.status


def due_deliveries(session, limit: int = 500) -> list[str]:
    """Rows to (re)send now: due pending rows, and rows whose sender died mid-attempt.

    A row handed out here is not handed out again for 30 s, so a slow queue is not flooded.
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
