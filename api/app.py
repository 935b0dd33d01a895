"""The FastAPI app factory: `uvicorn --factory api.app:create_app`."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from api import errors
from api.routes import admin, health, jobs, models, streams, usage, webhooks
from llmq import __version__, metrics
from llmq.catalog import load_catalog
from llmq.queue_metrics import QueueCollector
from llmq.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Long-polls and event streams each hold a connection while they wait: a blocking
        # pool makes the next waiter queue briefly instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, timeout=10
        )
        app.state.redis = aioredis.Redis(connection_pool=pool)
        app.state.sync_redis = redis.Redis.from_url(settings.redis_url)
        app.state.limit_redis = redis.Redis.from_url(
            settings.rate_limit_redis_url or settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        yield
        await app.state.redis.aclose()
        app.state.sync_redis.close()
        app.state.limit_redis.close()

    app = FastAPI(
        title="llmq",
        version=__version__,
        description="Asynchronous LLM inference jobs on your own GPUs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = load_catalog(settings.catalog_path)
    app.state.queue_registry = CollectorRegistry()
    app.state.queue_registry.register(
        QueueCollector(
            app.state.catalog.names,
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
        )
    )
    errors.install(app)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = (
            settings.max_bulk_request_bytes
            if request.url.path.endswith("/bulk")
            else settings.max_request_bytes
        )
        if length and length.isdigit() and int(length) > limit:
            metrics.REJECTIONS.labels("too_large").inc()
            metrics.HTTP_REQUESTS.labels("unmatched", request.method, "413").inc()
            return errors.problem(
                413,
                "Request too large",
                f"body exceeds {limit} bytes",
                kind="too-large",
                instance=request.url.path,
            )
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.HTTP_LATENCY.labels(path, request.method).observe(time.perf_counter() - started)
        metrics.HTTP_REQUESTS.labels(path, request.method, str(response.status_code)).inc()
        return response

    for router in (
        jobs.router,
        streams.router,
        webhooks.router,
        models.router,
        usage.router,
        admin.router,
        health.router,
    ):
        app.include_router(router)
    return app
