"""The FastAPI app factory: `uvicorn --factory api.app:create_app`."""

from __future__ import annotations

from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api import errors
from api.headers import HeaderLimits
from api.metrics_server import create_metrics_app, metrics_server
from api.middleware import RequestMetrics
from api.routes import admin, batches, chat, files, health, jobs, models, streams, usage, webhooks
from llmq import __version__
from llmq.catalog import Catalog, load_catalog
from llmq.files import file_store
from llmq.heap import freeze_startup_heap
from llmq.key_cache import KeyCache, subscriber_client
from llmq.queue_metrics import QueueCollector
from llmq.queues import make_celery
from llmq.settings import Settings, get_settings


def semantic_cache(catalog: Catalog, client: redis.Redis, settings: Settings):
    """The process's semantic cache index, when a catalog model turns it on (it brings numpy
    and the embedding model's weights, so an API that needs none of it loads none of it)."""
    if not any(catalog.get(name).semantic_cache_threshold for name in catalog.names()):
        return None
    from llmq.semantic_cache import SemanticCache

    return SemanticCache.from_settings(client, settings)


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
        app.state.semantic_cache = semantic_cache(app.state.catalog, app.state.sync_redis, settings)
        internal = create_metrics_app(settings, app.state.queue_registry, app.state.sync_redis)
        freeze_startup_heap()
        with metrics_server(internal, settings.api_metrics_host, settings.api_metrics_port):
            yield
        await app.state.redis.aclose()
        app.state.key_cache.close()
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
    app.state.file_store = file_store(settings)
    app.state.celery = make_celery(settings)  # sends tasks by name; never runs them
    app.state.key_cache = KeyCache(
        subscriber_client(settings.redis_url), settings.redis_prefix, settings.auth_cache_ttl_s
    )
    app.state.queue_registry = CollectorRegistry()
    app.state.queue_registry.register(
        QueueCollector(
            app.state.catalog.names,
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
            app.state.catalog,
        )
    )
    errors.install(app)

    app.add_middleware(RequestMetrics, settings=settings)
    app.add_middleware(HeaderLimits, settings=settings)  # outermost: before any other work

    for router in (
        jobs.router,
        streams.router,
        files.router,
        batches.router,
        webhooks.router,
        models.router,
        chat.router,
        usage.router,
        admin.router,
        health.router,
    ):
        app.include_router(router)
    return app
