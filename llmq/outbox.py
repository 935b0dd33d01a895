"""The webhook outbox: a row per job or batch event, written in the transaction that ends it.

The row's id is the Standard Webhooks `webhook-id`; it is derived from the job or the batch
(one final event each), so writing it twice is harmless and every retry carries the same id.
A job's event goes to its own `webhook_url` or its key's; a batch's to its key's. Rows
created in a session are listed in `session.info`, so the caller can hand them to the sender
once the transaction has committed.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.models import BATCH_FINAL_STATUSES, FINAL_STATUSES

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
      AND j.batch_id IS NULL  -- a batch's jobs are announced by its one batch.* event
      AND coalesce(j.webhook_url, k.webhook_url) IS NOT NULL
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)


_ENQUEUE_BATCH = sa.text(
    """
    INSERT INTO webhook_deliveries (id, batch_id, api_key_id, event_type, url)
    SELECT 'msg_' || b.id, b.id, b.api_key_id, 'batch.' || b.status, k.webhook_url
    FROM batches b JOIN api_keys k ON k.id = b.api_key_id
    WHERE b.id = :id AND b.status = ANY(:final) AND k.webhook_url IS NOT NULL
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)
_BATCH_FINAL = [s.value for s in BATCH_FINAL_STATUSES]


def delivery_id(job_id: uuid.UUID) -> str:
    return f"msg_{job_id.hex}"


def enqueue_final_events(session: Session, job_ids: list[uuid.UUID]) -> list[str]:
    """Write the outbox rows of jobs that just reached a final state and have a webhook."""
    if not job_ids:
        return []
    return _noted(session, session.execute(_ENQUEUE, {"ids": list(job_ids), "final": _FINAL}))


def enqueue_batch_event(session: Session, batch_id: str) -> list[str]:
    """Write the outbox row of a batch that just reached a final state, if its key has a
    webhook URL; call it in the transaction that ended the batch."""
    return _noted(session, session.execute(_ENQUEUE_BATCH, {"id": batch_id, "final": _BATCH_FINAL}))


def _noted(session: Session, written) -> list[str]:
    """The ids of the rows an insert wrote, listed in the session for after its commit."""
    ids = [row.id for row in written]
    session.info.setdefault(CREATED, []).extend(ids)
    return ids


def created_in(session: Session) -> list[str]:
    return list(session.info.get(CREATED, []))
