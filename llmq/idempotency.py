"""`Idempotency-Key` on submit and on batch create: the same key and body give the same
job(s), or the same batch, for a while.

Keys are scoped per API key and remembered for `LLMQ_IDEMPOTENCY_RETENTION_H` hours. A
request first takes a transaction-scoped advisory lock on (api key, idempotency key), then
looks the key up; its row is written in the transaction that creates the jobs (or the
batch). A concurrent twin waits on the lock until that transaction ends, then finds the row
and answers with the same jobs, before any rate limit, concurrency limit or budget is
charged: twenty identical requests create one job (or one bulk, one batch) and all twenty
get it, even on a key with room for one.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from llmq.errors import BadRequest, IdempotencyMismatch
from llmq.models import IdempotencyKey

MAX_KEY_CHARS = 255
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # the answer's header on a replay: "true"


def parse_header(raw: str | None) -> str | None:
    """The key from the header: an RFC 8941 string (`"abc"`) or a bare token."""
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value or len(value) > MAX_KEY_CHARS:
        raise BadRequest(HEADER, f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters")
    if any(not (0x20 < ord(c) < 0x7F) or c in '"\\' for c in value):
        raise BadRequest(HEADER, f"{HEADER} must be printable ASCII without spaces or quotes")
    return value


def fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of the request body in a canonical JSON form (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    key: str
    request_sha256: str


def _live(api_key_id: uuid.UUID, key: str, retention: timedelta):
    return sa.and_(
        IdempotencyKey.api_key_id == api_key_id,
        IdempotencyKey.key == key,
        IdempotencyKey.created_at >= sa.func.now() - retention,
    )


def lock(session: Session, api_key_id: uuid.UUID, key: str) -> None:
    """Serialize requests with this key until the transaction ends, across API replicas."""
    name = f"idempotency:{api_key_id}:{key}"
    session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(name, 0))))


def _earlier(
    session: Session, api_key_id: uuid.UUID, claim: Claim, retention: timedelta, batch: bool
) -> IdempotencyKey | None:
    """The row an earlier request with this key wrote, or None; 422 if its body differs, or
    if it made jobs where this one makes a batch (or the other way round)."""
    row = session.execute(
        sa.select(IdempotencyKey).where(_live(api_key_id, claim.key, retention))
    ).scalar_one_or_none()
    if row is None:
        return None
    if row.request_sha256 != claim.request_sha256 or (row.batch_id is not None) != batch:
        raise IdempotencyMismatch(
            f"{HEADER} {claim.key!r} was used with another request body; use a new key"
        )
    return row


def find(
    session: Session, api_key_id: uuid.UUID, claim: Claim, retention: timedelta
) -> list[uuid.UUID] | None:
    """The jobs an earlier request with this key made, in order, or None; 422 if the body
    differs."""
    row = _earlier(session, api_key_id, claim, retention, batch=False)
    if row is None:
        return None
    return list(row.job_ids) if row.job_ids else [row.job_id]


def find_batch(
    session: Session, api_key_id: uuid.UUID, claim: Claim, retention: timedelta
) -> str | None:
    """The batch an earlier batch create with this key made, or None; 422 if the body
    differs."""
    row = _earlier(session, api_key_id, claim, retention, batch=True)
    return None if row is None else row.batch_id


def record(
    session: Session,
    api_key_id: uuid.UUID,
    claim: Claim,
    job_ids: list[uuid.UUID],
    retention: timedelta,
    batch_id: str | None = None,
) -> bool:
    """Tie the key to new jobs, or to a new batch (`batch_id`; its jobs are the batch's). False
    when another request holds the key (it won the race)."""
    session.execute(
        sa.delete(IdempotencyKey).where(
            IdempotencyKey.api_key_id == api_key_id,
            IdempotencyKey.key == claim.key,
            IdempotencyKey.created_at < sa.func.now() - retention,
        )
    )
    made = {"batch_id": batch_id} if batch_id is not None else {
        "job_id": job_ids[0], "job_ids": job_ids if len(job_ids) > 1 else None
    }  # fmt: skip
    inserted = session.execute(
        pg_insert(IdempotencyKey)
        .values(api_key_id=api_key_id, key=claim.key, request_sha256=claim.request_sha256, **made)
        .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
        .returning(IdempotencyKey.key)
    ).first()
    return inserted is not None
