"""Liveness, readiness (Postgres and Redis answer), Prometheus metrics and worker discovery."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.errors import problem
from api.openapi import responses
from llmq.db import get_engine
from llmq.queue_metrics import scrape_targets

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


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """This process's metrics, then the queue gauges read from Redis and Postgres now."""
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.queue_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/targets")
def metrics_targets(request: Request) -> list[dict]:
    """Prometheus HTTP service discovery (`http_sd_configs`): every live worker's /metrics."""
    settings = request.app.state.settings
    return scrape_targets(request.app.state.sync_redis, settings.redis_prefix)
