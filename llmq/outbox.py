"""The webhook outbox: a row per job event, written in the transaction that ends the job.

The row's id is the Standard Webhooks `webhook-id`; it is derived from the job (one final
event per job), so writing it twice is harmless and every retry carries the same id. Rows
created in a session are listed in `session.info`, so the caller can hand them to the sender
once the transaction has committed.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.models import FINAL_STATUSES

CREATED = "llmq.webhook_deliveries"
_FINAL = [s.value for s in FINAL_STATUSES]

_ENQUEUE = sa.text(
    """
    INSERT INTO webhook_deliveries (id, job_id, api_key_id, event_type, url)
    SELECT 'msg_' || replace(j.id::text, '-', ''), j.id, j.api_key_id, 'job.' || j.status,
           coalesce(j.webhook_url, k.webhook_url)
    FROM jobs j JOIN api_keys k ON k.id = j.api_key_id
    WHERE j.id = ANY(:ids)
      AND j.status = ANY(:final)
      AND coalesce(j.webhook_url, k.webhook_url) IS NOT NULL
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)


def delivery_id(job_id: uuid.UUID) -> str:
    return f"msg_{job_id.hex}"


def enqueue_final_events(session: Session, job_ids: list[uuid.UUID]) -> list[str]:
    """Write the outbox rows of jobs that just reached a final state and have a webhook."""
    if not job_ids:
        return []
    ids = [row.id for row in session.execute(_ENQUEUE, {"ids": list(job_ids), "final": _FINAL})]
    session.info.setdefault(CREATED, []).extend(ids)
    return ids


def created_in(session: Session) -> list[str]:
    return list(session.info.get(CREATED, []))
