"""The API's Prometheus endpoints, on an internal port apart from the public one.

`/metrics` (this process's request metrics, then the queue gauges read from Redis and Postgres
at scrape time) and `/metrics/targets` (HTTP service discovery of the workers' own endpoints)
are for Prometheus on the internal network, not for API clients: the public app has neither.
A tiny FastAPI app serves them from a uvicorn server in a thread of the API process, started
and stopped with the public app, so a slow scrape never holds the public event loop.

With several API processes in one container (`LLMQ_API_WORKERS`), `llmq api` runs them in
Prometheus' multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, see `cli.api_server`): each writes
its counters to files there, the first to bind the port serves the sum of all of them, and
the others run without the port. Without that directory the counters are this process's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from llmq.queue_metrics import scrape_targets
from llmq.settings import Settings

log = logging.getLogger("llmq.api")

router = APIRouter()
STOP_TIMEOUT_S = 5.0
THREAD_NAME = "metrics-server"


class _NotFromMetricsServer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


_NOT_SCRAPES = _NotFromMetricsServer()


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """This process's metrics, then the queue gauges read from Redis and Postgres now."""
    body = generate_latest(process_registry()) + generate_latest(request.app.state.queue_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def process_registry() -> CollectorRegistry:
    """The API's own metrics: summed over every API process in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


@router.get("/metrics/targets")
def metrics_targets(request: Request) -> list[dict]:
    """Prometheus HTTP service discovery (`http_sd_configs`): every live worker's /metrics."""
    return scrape_targets(request.app.state.sync_redis, request.app.state.settings.redis_prefix)


def create_metrics_app(
    settings: Settings, queue_registry: CollectorRegistry, sync_redis: redis.Redis
) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.queue_registry = queue_registry
    app.state.sync_redis = sync_redis
    app.include_router(router)
    return app


@contextmanager
def metrics_server(app: FastAPI, host: str, port: int) -> Iterator[int | None]:
    """Serve `app` on host:port while the block runs; yields the port, or None when off."""
    if not port:
        yield None
        return
    try:
        sock = socket.create_server((host, port), backlog=128)
    except OSError as exc:  # another process has the port: the API runs on without it
        level = logging.DEBUG if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else logging.WARNING
        log.log(level, "no metrics endpoint on %s:%d: %s", host, port, exc)
        yield None
        return
    # None: leave the logging of the public server as it is; scrapes stay out of its access log.
    config = uvicorn.Config(app, lifespan="off", log_config=None, log_level=None)
    logging.getLogger("uvicorn.access").addFilter(_NOT_SCRAPES)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=THREAD_NAME, daemon=True
    )
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)
        sock.close()
