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


def totals(key_id: uuid.UUID | None, start: datetime | None, end: datetime | None) -> sa.Subquery:
    """Rows of (api_key_id, day, model, jobs, cached_jobs, prompt_tokens, completion_tokens,
    cost_usd, gpu_cost_usd) whose sums per group are the ledger's over [start, end) for the
    key (None: every key). A group may come in several rows; one whose `jobs` sums to 0 has
    no ledger rows."""
    parts = []
    where = split(start, end)
    if where.days is not None:
        first, last = where.days
        rollup = sa.select(
            UsageDaily.api_key_id,
            UsageDaily.day,
            UsageDaily.model,
            UsageDaily.jobs,
            UsageDaily.cached_jobs,
            UsageDaily.prompt_tokens,
            UsageDaily.completion_tokens,
            UsageDaily.cost_usd,
            UsageDaily.gpu_cost_usd,
        )
        if key_id is not None:
            rollup = rollup.where(UsageDaily.api_key_id == key_id)
        if first is not None:
            rollup = rollup.where(UsageDaily.day >= first)
        if last is not None:
            rollup = rollup.where(UsageDaily.day < last)
        parts.append(rollup)
    for edge_start, edge_end in where.edges:
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
        if key_id is not None:
            ledger = ledger.where(LedgerEntry.api_key_id == key_id)
        if edge_start is not None:
            ledger = ledger.where(LedgerEntry.created_at >= edge_start)
        if edge_end is not None:
            ledger = ledger.where(LedgerEntry.created_at < edge_end)
        parts.append(ledger)
    union = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    return union.subquery("totals")
