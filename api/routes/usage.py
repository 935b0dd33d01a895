"""/v1/usage: totals from the ledger by model, day or key. A key sees its own; admins see all."""

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
from llmq.models import ApiKey, LedgerEntry

router = APIRouter(
    prefix="/v1/usage",
    tags=["usage"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 422, 503),
)


@router.get("", responses={200: {"content": {"text/csv": {}}}})
def usage(
    group_by: Literal["model", "day", "key"] = "model",
    start: datetime | None = None,
    end: datetime | None = None,
    format: Literal["json", "csv"] = Query("json", description="`csv` for a spreadsheet"),
    caller: Caller = Depends(deps.caller),
):
    group = {
        "model": LedgerEntry.model,
        "day": sa.func.to_char(sa.func.date_trunc("day", LedgerEntry.created_at), "YYYY-MM-DD"),
        "key": ApiKey.name,
    }[group_by]
    query = (
        sa.select(
            group.label("group"),
            sa.func.count().label("jobs"),
            sa.func.count().filter(LedgerEntry.cached).label("cached_jobs"),
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
            "cached_jobs": r.cached_jobs,
            "prompt_tokens": int(r.prompt_tokens),
            "completion_tokens": int(r.completion_tokens),
            "cost_usd": f"{r.cost_usd.normalize():f}",
            "gpu_cost_usd": f"{r.gpu_cost_usd.normalize():f}",
        }
        for r in rows
    ]
    total = {
        "jobs": sum(r.jobs for r in rows),
        "cached_jobs": sum(r.cached_jobs for r in rows),
        "prompt_tokens": sum(int(r.prompt_tokens) for r in rows),
        "completion_tokens": sum(int(r.completion_tokens) for r in rows),
        "cost_usd": f"{sum((r.cost_usd for r in rows), Decimal(0)).normalize():f}",
        "gpu_cost_usd": f"{sum((r.gpu_cost_usd for r in rows), Decimal(0)).normalize():f}",
    }
    if format == "csv":
        return Response(_csv(group_by, data), media_type="text/csv; charset=utf-8")
    return {"object": "usage", "group_by": group_by, "data": data, "total": total}


def _csv(group_by: str, data: list[dict]) -> str:
    """One row per group; amounts exactly as in JSON (decimal strings, never floats)."""
    out = io.StringIO()
    columns = [
        group_by,
        "jobs",
        "cached_jobs",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "gpu_cost_usd",
    ]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    return out.getvalue()
