"""/v1/usage: totals from the ledger by model, day or key. A key sees its own; admins see all."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends

from api import deps
from llmq.db import session_scope
from llmq.keys import Caller
from llmq.models import ApiKey, LedgerEntry

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("")
def usage(
    group_by: Literal["model", "day", "key"] = "model",
    start: datetime | None = None,
    end: datetime | None = None,
    caller: Caller = Depends(deps.caller),
) -> dict:
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
            "cost_usd": str(r.cost_usd.normalize()),
            "gpu_cost_usd": str(r.gpu_cost_usd.normalize()),
        }
        for r in rows
    ]
    total = {
        "jobs": sum(r.jobs for r in rows),
        "prompt_tokens": sum(int(r.prompt_tokens) for r in rows),
        "completion_tokens": sum(int(r.completion_tokens) for r in rows),
        "cost_usd": str(sum((r.cost_usd for r in rows), Decimal(0)).normalize()),
    }
    return {"object": "usage", "group_by": group_by, "data": data, "total": total}
