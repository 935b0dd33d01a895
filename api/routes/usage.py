"""/v1/usage: totals from the ledger by model, UTC day or key (`llmq.usage_daily`), or an
A/B report by alias variant. A key sees its own; admins see all."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response

from api import deps
from api.openapi import responses
from llmq import usage_daily
from llmq.db import session_scope
from llmq.keys import Caller
from llmq.ledger import usd
from llmq.models import ApiKey, Job, JobStatus, LedgerEntry

router = APIRouter(
    prefix="/v1/usage",
    tags=["usage"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 422, 503),
)


SUMS = ("prompt_tokens", "completion_tokens", "cost_usd", "gpu_cost_usd")  # ledger columns


def _sums(source=LedgerEntry) -> list:
    """The sums of the ledger's columns (or of `source`'s columns of the same names), labelled
    as the columns (0 where a group has no ledger row)."""
    return [sa.func.coalesce(sa.func.sum(getattr(source, c)), 0).label(c) for c in SUMS]


def _amounts(r) -> dict:
    return {
        "prompt_tokens": int(r.prompt_tokens),
        "completion_tokens": int(r.completion_tokens),
        "cost_usd": usd(r.cost_usd),
        "gpu_cost_usd": usd(r.gpu_cost_usd),
    }


def _run(query, owner, created, caller: Caller, start: datetime | None, end: datetime | None):
    """The query's rows for the caller's key (every key for an admin), created in [start, end)."""
    if not caller.is_admin:
        query = query.where(owner == caller.key_id)
    if start:
        query = query.where(created >= start)
    if end:
        query = query.where(created < end)
    with session_scope() as session:
        return session.execute(query).all()


def _answer(group_by: str, columns: list[str], data: list[dict], rows, format: str, **total):
    """JSON with the totals over every row, or CSV with `columns`."""
    if format == "csv":
        return Response(_csv(columns, data), media_type="text/csv; charset=utf-8")
    total = {"jobs": sum(r.jobs for r in rows), **total}
    total["prompt_tokens"] = sum(int(r.prompt_tokens) for r in rows)
    total["completion_tokens"] = sum(int(r.completion_tokens) for r in rows)
    total["cost_usd"] = usd(sum((r.cost_usd for r in rows), Decimal(0)))
    total["gpu_cost_usd"] = usd(sum((r.gpu_cost_usd for r in rows), Decimal(0)))
    return {"object": "usage", "group_by": group_by, "data": data, "total": total}


@router.get("", responses={200: {"content": {"text/csv": {}}}})
def usage(
    group_by: Literal["model", "day", "key", "variant"] = "model",
    start: datetime | None = None,
    end: datetime | None = None,
    alias: str | None = Query(
        None, max_length=200, description="With `group_by=variant`: this alias's variants only"
    ),
    format: Literal["json", "csv"] = Query("json", description="`csv` for a spreadsheet"),
    caller: Caller = Depends(deps.caller),
):
    if group_by == "variant":
        return _variants(caller, start, end, alias, format)
    src = usage_daily.totals(None if caller.is_admin else caller.key_id, start, end)
    group = {
        "model": src.c.model,
        "day": sa.func.to_char(src.c.day, "YYYY-MM-DD"),
        "key": ApiKey.name,
    }[group_by]
    jobs = sa.cast(sa.func.sum(src.c.jobs), sa.BigInteger)
    query = (
        sa.select(
            group.label("group"),
            jobs.label("jobs"),
            sa.cast(sa.func.sum(src.c.cached_jobs), sa.BigInteger).label("cached_jobs"),
            *_sums(src.c),
        )
        .select_from(src)
        .group_by(group)
        .having(jobs > 0)
        .order_by(group)
    )
    if group_by == "key":
        query = query.join(ApiKey, ApiKey.id == src.c.api_key_id)
    with session_scope() as session:
        rows = session.execute(query).all()
    data = [
        {group_by: r.group, "jobs": r.jobs, "cached_jobs": r.cached_jobs, **_amounts(r)}
        for r in rows
    ]
    cached_jobs = sum(r.cached_jobs for r in rows)
    columns = [group_by, "jobs", "cached_jobs", *SUMS]
    return _answer(group_by, columns, data, rows, format, cached_jobs=cached_jobs)


# Jobs an A/B report counts: those that ended by themselves (a cancel is the client's doing).
REPORTED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED)
VARIANT_COLUMNS = [
    "alias", "variant", "model", "jobs", "failed", "failure_rate", *SUMS,
    "latency_p50_ms", "latency_p95_ms",
]  # fmt: skip


def _variants(
    caller: Caller, start: datetime | None, end: datetime | None, alias: str | None, format: str
):
    """Per (alias, variant, model): the jobs that ended, how many failed or expired, their
    ledger tokens and cost, and the latency (created to finished) of those that succeeded."""
    succeeded = Job.status == JobStatus.SUCCEEDED
    latency_ms = sa.case((succeeded, sa.extract("epoch", Job.finished_at - Job.created_at) * 1000))
    query = (
        sa.select(
            Job.alias,
            Job.variant,
            Job.model,
            sa.func.count().label("jobs"),
            sa.func.count().filter(sa.not_(succeeded)).label("failed"),
            *_sums(),
            sa.func.percentile_cont(0.5).within_group(latency_ms).label("p50"),
            sa.func.percentile_cont(0.95).within_group(latency_ms).label("p95"),
        )
        .select_from(Job)
        .outerjoin(LedgerEntry, LedgerEntry.job_id == Job.id)
        .where(Job.alias.is_not(None), Job.status.in_(REPORTED))
        .group_by(Job.alias, Job.variant, Job.model)
        .order_by(Job.alias, Job.variant, Job.model)
    )
    if alias is not None:
        query = query.where(Job.alias == alias)
    rows = _run(query, Job.api_key_id, Job.created_at, caller, start, end)
    data = [
        {
            "alias": r.alias,
            "variant": r.variant,
            "model": r.model,
            "jobs": r.jobs,
            "failed": r.failed,
            "failure_rate": round(r.failed / r.jobs, 4),
            **_amounts(r),
            "latency_p50_ms": None if r.p50 is None else round(r.p50),
            "latency_p95_ms": None if r.p95 is None else round(r.p95),
        }
        for r in rows
    ]
    failed = sum(r.failed for r in rows)
    return _answer("variant", VARIANT_COLUMNS, data, rows, format, failed=failed)


def _csv(columns: list[str], data: list[dict]) -> str:
    """One row per group; amounts exactly as in JSON (decimal strings, never floats)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    return out.getvalue()
