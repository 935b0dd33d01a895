"""/v1/usage: totals from the ledger by model, day or key, or an A/B report by alias variant.
A key sees its own; admins see all."""

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
    group = {
        "model": LedgerEntry.model,
        "day": sa.func.to_char(sa.func.date_trunc("day", LedgerEntry.created_at), "YYYY-MM-DD"),
        "key": ApiKey.name,
    }[group_by]
    query = (
        sa.select(
            group.label("group"),
            sa.func.count().label("jobs"),
            sa.func.coalesce(sa.func.sum(LedgerEntry.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(LedgerEntry.completion_tokens), 0).label(
                "completion_tokens"
            ),
            sa.func.coalesce(sa.func.sum(LedgerEntry.cost_usd), 0).label("cost_usd"),
            sa.func.coalesce(sa.func.sum(LedgerEntry.gpu_cost_usd), 0).label("gpu_cost_usd"),
        )
        .join(ApiKey, ApiKey.id == LedgerEntry.api_key_id)
        .group_by(group)
        .order_by(group)
    )
    if not caller.is_admin:
        query = query.where(LedgerEntry.api_key_id == caller.key_id)
    if start:
        query = query.where(LedgerEntry.created_at >= start)
    if end:
        query = query.where(LedgerEntry.created_at < end)
    with session_scope() as session:
        rows = session.execute(query).all()
    data = [
        {
            group_by: r.group,
            "jobs": r.jobs,
            "prompt_tokens": int(r.prompt_tokens),
            "completion_tokens": int(r.completion_tokens),
            "cost_usd": f"{r.cost_usd.normalize():f}",
            "gpu_cost_usd": f"{r.gpu_cost_usd.normalize():f}",
        }
        for r in rows
    ]
    total = {
        "jobs": sum(r.jobs for r in rows),
        "prompt_tokens": sum(int(r.prompt_tokens) for r in rows),
        "completion_tokens": sum(int(r.completion_tokens) for r in rows),
        "cost_usd": f"{sum((r.cost_usd for r in rows), Decimal(0)).normalize():f}",
        "gpu_cost_usd": f"{sum((r.gpu_cost_usd for r in rows), Decimal(0)).normalize():f}",
    }
    if format == "csv":
        columns = [group_by, "jobs", "prompt_tokens", "completion_tokens", "cost_usd",
                   "gpu_cost_usd"]  # fmt: skip
        return Response(_csv(columns, data), media_type="text/csv; charset=utf-8")
    return {"object": "usage", "group_by": group_by, "data": data, "total": total}


# Jobs an A/B report counts: those that ended by themselves (a cancel is the client's doing).
REPORTED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED)
VARIANT_COLUMNS = [
    "alias", "variant", "model", "jobs", "failed", "failure_rate", "prompt_tokens",
    "completion_tokens", "cost_usd", "gpu_cost_usd", "latency_p50_ms", "latency_p95_ms",
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
            sa.func.coalesce(sa.func.sum(LedgerEntry.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(LedgerEntry.completion_tokens), 0).label(
                "completion_tokens"
            ),
            sa.func.coalesce(sa.func.sum(LedgerEntry.cost_usd), 0).label("cost_usd"),
            sa.func.coalesce(sa.func.sum(LedgerEntry.gpu_cost_usd), 0).label("gpu_cost_usd"),
            sa.func.percentile_cont(0.5).within_group(latency_ms).label("p50"),
            sa.func.percentile_cont(0.95).within_group(latency_ms).label("p95"),
        )
        .select_from(Job)
        .outerjoin(LedgerEntry, LedgerEntry.job_id == Job.id)
        .where(Job.alias.is_not(None), Job.status.in_(REPORTED))
        .group_by(Job.alias, Job.variant, Job.model)
        .order_by(Job.alias, Job.variant, Job.model)
    )
    if not caller.is_admin:
        query = query.where(Job.api_key_id == caller.key_id)
    if alias is not None:
        query = query.where(Job.alias == alias)
    if start:
        query = query.where(Job.created_at >= start)
    if end:
        query = query.where(Job.created_at < end)
    with session_scope() as session:
        rows = session.execute(query).all()
    data = [
        {
            "alias": r.alias,
            "variant": r.variant,
            "model": r.model,
            "jobs": r.jobs,
            "failed": r.failed,
            "failure_rate": round(r.failed / r.jobs, 4),
            "prompt_tokens": int(r.prompt_tokens),
            "completion_tokens": int(r.completion_tokens),
            "cost_usd": usd(r.cost_usd),
            "gpu_cost_usd": usd(r.gpu_cost_usd),
            "latency_p50_ms": None if r.p50 is None else round(r.p50),
            "latency_p95_ms": None if r.p95 is None else round(r.p95),
        }
        for r in rows
    ]
    total = {
        "jobs": sum(r.jobs for r in rows),
        "failed": sum(r.failed for r in rows),
        "prompt_tokens": sum(int(r.prompt_tokens) for r in rows),
        "completion_tokens": sum(int(r.completion_tokens) for r in rows),
        "cost_usd": usd(sum((r.cost_usd for r in rows), Decimal(0))),
        "gpu_cost_usd": usd(sum((r.gpu_cost_usd for r in rows), Decimal(0))),
    }
    if format == "csv":
        return Response(_csv(VARIANT_COLUMNS, data), media_type="text/csv; charset=utf-8")
    return {"object": "usage", "group_by": "variant", "data": data, "total": total}


def _csv(columns: list[str], data: list[dict]) -> str:
    """One row per group; amounts exactly as in JSON (decimal strings, never floats)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    return out.getvalue()
