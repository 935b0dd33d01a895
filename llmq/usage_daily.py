"""The ledger's totals per key, UTC day and model, at a cost that does not grow with the
number of jobs: whole days come from the daily rollup (`UsageDaily`, kept current by
triggers on the ledger), and only the part-days at either end of a range from the ledger's
own rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from llmq.models import LedgerEntry, UsageDaily


@dataclass(frozen=True)
class Split:
    """A range [start, end) as whole UTC days [first, last) (None: unbounded) that the rollup
    answers, or no days at all, and the part-days around them that the ledger answers."""

    days: tuple[date | None, date | None] | None
    edges: tuple[tuple[datetime | None, datetime | None], ...] = ()


def _utc(moment: datetime) -> datetime:
    """A time without a zone is a UTC time."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def split(start: datetime | None, end: datetime | None) -> Split:
    """Which of [start, end) the rollup can answer (whole UTC days) and which the ledger must."""
    start = None if start is None else _utc(start)
    end = None if end is None else _utc(end)
    first = None
    if start is not None:
        first = start.date() if start == _midnight(start.date()) else start.date() + timedelta(1)
    last = None if end is None else end.date()
    if first is not None and last is not None and first >= last:
        return Split(None, ((start, end),))
    edges = []
    if start is not None and first is not None and start < _midnight(first):
        edges.append((start, _midnight(first)))
    if end is not None and last is not None and end > _midnight(last):
        edges.append((_midnight(last), end))
    return Split((first, last), tuple(edges))


COLUMNS = ("api_key_id", "day", "model", "jobs", "cached_jobs", "prompt_tokens",
           "completion_tokens", "cost_usd", "gpu_cost_usd")  # fmt: skip


def _bounded(query, owner, key_id: uuid.UUID | None, column, low, high):
    """The query's rows of the key (None: every key) with `low <= column < high` (None: no
    bound)."""
    if key_id is not None:
        query = query.where(owner == key_id)
    if low is not None:
        query = query.where(column >= low)
    if high is not None:
        query = query.where(column < high)
    return query


def totals(key_id: uuid.UUID | None, start: datetime | None, end: datetime | None) -> sa.Subquery:
    """Rows of COLUMNS whose sums per group are the ledger's over [start, end) for the
    key (None: every key). A group may come in several rows; one whose `jobs` sums to 0 has
    no ledger rows."""
    parts = []
    where = split(start, end)
    if where.days is not None:
        rollup = sa.select(*(getattr(UsageDaily, c) for c in COLUMNS))
        parts.append(_bounded(rollup, UsageDaily.api_key_id, key_id, UsageDaily.day, *where.days))
    ledger = sa.select(
        LedgerEntry.api_key_id,
        sa.cast(sa.func.timezone("UTC", LedgerEntry.created_at), sa.Date).label("day"),
        LedgerEntry.model,
        sa.cast(sa.literal(1), sa.BigInteger).label("jobs"),
        sa.cast(sa.cast(LedgerEntry.cached, sa.Integer), sa.BigInteger).label("cached_jobs"),
        sa.cast(LedgerEntry.prompt_tokens, sa.BigInteger).label("prompt_tokens"),
        sa.cast(LedgerEntry.completion_tokens, sa.BigInteger).label("completion_tokens"),
        LedgerEntry.cost_usd,
        LedgerEntry.gpu_cost_usd,
    )
    for edge in where.edges:
        parts.append(
            _bounded(ledger, LedgerEntry.api_key_id, key_id, LedgerEntry.created_at, *edge)
        )
    union = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    return union.subquery("totals")
