"""The sweeper's pass over batches: expire those past their window, finalize those whose
jobs have all ended (the net under every other trigger: a finalizer that died is run
again here)."""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import outbox
from llmq.announce import Announcer, Committed
from llmq.batches.finalize import finalize_batch, ready_batches
from llmq.batches.records import OPEN, start_cancel
from llmq.db import session_scope
from llmq.files.store import FileStore
from llmq.jobs import Stopped
from llmq.models import Batch

log = logging.getLogger(__name__)
EXPIRED = {"code": "batch_expired", "message": "the batch's completion window ended first"}


def stopped_committed(session: Session, stopped: list[Stopped]) -> Committed:
    """The after-commit effects of cancelling a batch's jobs, as the cancel route's."""
    refunds: dict[uuid.UUID, int] = {}
    for job in stopped:
        if job.refund_tokens:
            refunds[job.api_key_id] = refunds.get(job.api_key_id, 0) - job.refund_tokens
    ids = [str(job.id) for job in stopped]
    running = [str(job.id) for job in stopped if job.running]
    return Committed(ended=ids, deliveries=outbox.created_in(session), stop=running,
                     token_deltas=refunds, unstreamed=set(ids))  # fmt: skip


def expire_due(announcer: Announcer, limit: int = 100) -> list[str]:
    """Cancel what is left of open batches past `expires_at`; they end `expired`."""
    with session_scope() as session:
        due = session.scalars(
            sa.select(Batch)
            .where(Batch.status.in_(OPEN), Batch.expires_at < sa.func.now(),
                   Batch.expired_at.is_(None))
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()  # fmt: skip
        stopped = [job for batch in due for job in start_cancel(session, batch, EXPIRED)]
        ids = [batch.id for batch in due]
        committed = stopped_committed(session, stopped)
    announcer.announce(committed)
    return ids


def finalize_ready(store: FileStore, announcer: Announcer) -> list[str]:
    """Finalize every open batch whose jobs have all ended; the ids this pass ended."""
    ended = []
    for batch_id in ready_batches():
        try:
            if finalize_batch(store, batch_id, announcer):
                ended.append(batch_id)
        except Exception:  # the next pass tries again; the files are written over
            log.exception("could not finalize batch %s", batch_id)
    return ended
