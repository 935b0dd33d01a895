"""Budgets: a key may not spend past its budget in a day or a month (UTC).

Submit reserves the job's worst-case cost on the job row (`reserved_cost_usd`) under a
per-key advisory lock, so concurrent submits on any replica see each other. A reservation
counts while its job is queued or running; the worker's ledger write settles it with the
real cost in the same transaction that ends the job, and a cancelled or failed job stops
counting at once. Spend in a period = ledger cost of the period + open reservations, read
in one statement.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import usage_daily
from llmq.ledger import token_cost_usd
from llmq.models import ACTIVE_STATUSES, Job

CHAT_OVERHEAD_TOKENS = 8  # per message, for role markers and separators of chat templates


def estimate_prompt_tokens(text_bytes: int, messages: int, context_length: int) -> int:
    """An upper bound on the prompt's tokens without loading a tokenizer.

    Byte-level tokenizers emit at most one token per byte; chat templates add a few per
    message; no prompt that runs may exceed the model's context.
    """
    return min(text_bytes + CHAT_OVERHEAD_TOKENS * (messages + 1), context_length)


def worst_case_cost_usd(
    prompt_tokens: int, max_tokens: int, price_in: Decimal, price_out: Decimal
) -> Decimal:
    return token_cost_usd(prompt_tokens, max_tokens, price_in, price_out)


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown budget period {period!r}")


def period_end(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "day":
        return datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


@dataclass(frozen=True)
class Spend:
    settled_usd: Decimal
    reserved_usd: Decimal

    @property
    def total_usd(self) -> Decimal:
        return self.settled_usd + self.reserved_usd


def lock_key(session: Session, key_id: uuid.UUID) -> None:
    """Serialize this key's submits until the transaction ends, across every API replica."""
    session.execute(
        sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(str(key_id), 0)))
    )


def spend(session: Session, key_id: uuid.UUID, since: datetime) -> Spend:
    """Settled and reserved cost from one statement, so one snapshot: a batch that settles
    while this runs is counted once, as a reservation or as a ledger cost, never zero times."""
    ledger = usage_daily.totals(key_id, since, None)  # a period starts at a UTC midnight
    settled = sa.select(sa.func.coalesce(sa.func.sum(ledger.c.cost_usd), 0)).scalar_subquery()
    reserved = (
        sa.select(sa.func.coalesce(sa.func.sum(Job.reserved_cost_usd), 0))
        .where(Job.api_key_id == key_id, Job.status.in_(ACTIVE_STATUSES))
        .scalar_subquery()
    )
    row = session.execute(sa.select(settled.label("settled"), reserved.label("reserved"))).one()
    return Spend(Decimal(row.settled), Decimal(row.reserved))


def in_flight(session: Session, key_id: uuid.UUID) -> int:
    """The key's jobs queued or running against its `max_concurrent`; a batch's jobs are
    exempt (the queue paces them), so a running batch never locks out the key's requests."""
    return int(
        session.scalar(
            sa.select(sa.func.count()).where(
                Job.api_key_id == key_id,
                Job.status.in_(ACTIVE_STATUSES),
                Job.batch_id.is_(None),
            )
        )
    )


def seconds_until(later: datetime, now: datetime) -> int:
    return max(1, math.ceil((later - now).total_seconds()))
