"""The long-running processes: a model's worker, the webhook sender, the API, Flower and the
scheduler. Each runs in this process (or replaces it with `exec`)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from cli.common import fail, require_secret_key
from llmq.settings import get_settings


def worker(
    model: Annotated[str, typer.Option(help="Catalog model to serve.")],
    concurrency: Annotated[
        int | None, typer.Option(help="Task threads (default: max_batch_size).")
    ] = None,
    node: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run one worker process for MODEL: Celery threads pool on the model's queue."""
    require_secret_key()
    from workers.app import run_worker, worker_argv

    node = node or f"{model}-{os.getpid()}@%h"
    code = run_worker(worker_argv(model, node, concurrency, loglevel))  # no second interpreter
    if code:
        raise typer.Exit(code)


def webhook_worker(
    concurrency: Annotated[int, typer.Option(help="Deliveries in parallel.")] = 8,
    node: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a webhook sender: Celery threads pool on `llmq.webhooks`; loads no model."""
    require_secret_key()
    from llmq.queues import WEBHOOK_QUEUE

    node = node or f"webhooks-{os.getpid()}@%h"
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.webhook_app", "worker",
        "-P", "threads", "-c", str(concurrency), "--prefetch-multiplier", "1",
        "-Q", WEBHOOK_QUEUE, "-n", node, "--without-mingle", "--without-gossip", "-l", loglevel,
    ]  # fmt: skip
    os.execv(sys.executable, argv)


def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the HTTP API (uvicorn, LLMQ_API_WORKERS processes); its metrics are on
    LLMQ_API_METRICS_PORT."""
    require_secret_key()
    import uvicorn

    from cli.api_server import multiprocess_env, worker_count

    workers = worker_count(get_settings().api_workers)
    os.environ.update(multiprocess_env(dict(os.environ), workers))
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def flower(
    port: Annotated[int | None, typer.Option(help="Port (default LLMQ_FLOWER_PORT).")] = None,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    loglevel: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Run Flower on the Celery app, with basic auth, bounded memory and offline workers purged."""
    from cli.flower import flower_argv, flower_env

    settings = get_settings()
    if not settings.flower_basic_auth:
        fail("set LLMQ_FLOWER_BASIC_AUTH=user:password (Flower's API is off without auth)")
    argv = flower_argv(settings, port=port, address=address, loglevel=loglevel)
    os.execve(sys.executable, argv, flower_env(settings, os.environ))


def scheduler(
    backend: Annotated[
        str | None, typer.Option(help="local or kubernetes (default: LLMQ_SCHEDULER_BACKEND).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Pools to manage (default: every catalog model).")
    ] = None,
) -> None:
    """Run the scheduler: resize each model's pool from its queue, and sweep lost jobs."""
    require_secret_key()
    import logging
    import threading

    from prometheus_client import start_http_server

    from scheduler.main import build

    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if backend not in (None, "local", "kubernetes"):
        fail(f"unknown backend {backend!r}: local or kubernetes")
    sched = build(settings, backend, model)
    if settings.scheduler_metrics_port:
        try:
            start_http_server(settings.scheduler_metrics_port)
        except OSError as exc:  # another process has the port: run on without metrics
            logging.getLogger("llmq.scheduler").warning(
                "no metrics endpoint on port %d: %s", settings.scheduler_metrics_port, exc
            )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sched.run(stop)
