"""/v1/jobs/{id}/webhooks: the delivery log of a job's webhook, and manual redelivery.

Redelivery is limited per key (`LLMQ_WEBHOOK_REDELIVER_PER_MIN`, on the same Redis limiter as
requests and tokens), since each call makes the sender POST to a URL again.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response

from api import deps, ratelimits
from api.openapi import responses
from llmq import job_queries, ratelimit
from llmq.db import session_scope
from llmq.errors import JobStateConflict
from llmq.keys import Caller
from llmq.models import WebhookAttempt, WebhookDelivery
from llmq.queues import get_celery, publish_webhooks

router = APIRouter(
    prefix="/v1/jobs",
    tags=["webhooks"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 404, 422, 503),
)
REDELIVER_POLICY = "redeliver"


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _describe(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict:
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "event_type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "created_at": _iso(delivery.created_at),
        "finished_at": _iso(delivery.finished_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "log": [
            {
                "attempt": a.attempt,
                "started_at": _iso(a.started_at),
                "duration_ms": a.duration_ms,
                "status_code": a.status_code,
                "error": a.error,
            }
            for a in attempts
        ],
    }


def _deliveries(session, job_id) -> list[dict]:
    rows = session.execute(
        sa.select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    ).scalars()
    out = []
    for delivery in rows:
        attempts = session.execute(
            sa.select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery.id)
            .order_by(WebhookAttempt.attempt, WebhookAttempt.id)
        ).scalars()
        out.append(_describe(delivery, list(attempts)))
    return out


@router.get("/{job_id}/webhooks")
def webhook_log(job_id: str, caller: Caller = Depends(deps.caller)) -> dict:
    """Each attempt's time, status code and error; response bodies are never kept."""
    with session_scope() as session:
        job = job_queries.get_job(session, job_id, caller.key_id)
        return {"object": "list", "data": _deliveries(session, job.id)}


@router.post("/{job_id}/webhooks/redeliver", status_code=202, responses=responses(429, 409))
def redeliver(
    job_id: str, request: Request, response: Response, caller: Caller = Depends(deps.caller)
) -> dict:
    """Send the job's webhook again now, with the same `webhook-id` and body."""
    per_min = request.app.state.settings.webhook_redeliver_per_min
    rule = ratelimit.Rule(REDELIVER_POLICY, per_min, 1)
    response.headers.update(ratelimits.enforce_rules(request, caller, [rule]))
    with session_scope() as session:
        job = job_queries.get_job(session, job_id, caller.key_id)
        ids = list(
            session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.job_id == job.id, WebhookDelivery.status != "sending")
                .values(status="pending", next_attempt_at=sa.func.now(), finished_at=None)
                .returning(WebhookDelivery.id)
            ).scalars()
        )
        if not ids:
            raise JobStateConflict(f"job {job.id} has no webhook delivery to send again")
    publish_webhooks(get_celery(), ids)
    with session_scope() as session:
        return {"object": "list", "data": _deliveries(session, job.id)}
