"""Liveness and readiness (Postgres and Redis answer). Metrics are on an internal port:
`api/metrics_server.py`."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.errors import problem
from api.openapi import responses
from llmq.db import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
async def readyz(request: Request):
    checks = {}

    def database() -> None:
        with get_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    try:
        await run_in_threadpool(database)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {exc.__class__.__name__}"
    try:
        await request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem(
        503, "Not ready", f"unreachable: {failing}", kind="not-ready", instance="/readyz"
    )
