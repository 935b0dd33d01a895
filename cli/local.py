"""Commands for a machine of one's own: check the services, migrate, the dev stack, the demo."""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer

from cli.common import console, fail
from llmq.settings import get_settings


def services() -> None:
    """Check that Redis and Postgres answer; say what to run when they do not."""
    from cli.devstack import INSTALL_HINT, postgres_answers, redis_answers

    settings = get_settings()
    missing = [
        name
        for name, ok in (
            (f"Redis ({settings.redis_url})", redis_answers(settings.redis_url)),
            (f"Postgres ({settings.database_url})", postgres_answers(settings.database_url)),
        )
        if not ok
    ]
    if missing:
        fail(f"{' and '.join(missing)} not answering: start them, or {INSTALL_HINT}")
    console.print("Redis and Postgres answer")


def migrate() -> None:
    """Create the database if missing and apply every migration."""
    from llmq.db import ensure_database
    from llmq.db import migrate as run_migrations

    url = get_settings().database_url
    if ensure_database(url):
        console.print("created the database")
    run_migrations(url)
    console.print("migrations applied")


def dev(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    model: Annotated[list[str] | None, typer.Option(help="Models to serve (default: all).")] = None,
    flower: Annotated[bool, typer.Option(help="Run Flower too.")] = True,
) -> None:
    """Run the local stack in the foreground, restarting a process that dies; Ctrl-C stops all."""
    from cli.devstack import Stack, StackError
    from llmq.catalog import get_catalog

    settings = get_settings()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Stack(
            settings, port=port, models=model or get_catalog().names(), flower=flower
        ) as stack:
            console.print(
                f"[green]llmq is up[/green]: API {stack.api_url}  (docs {stack.api_url}/docs)"
            )
            if flower:
                console.print(
                    f"Flower http://127.0.0.1:{settings.flower_port}  (user:password {stack.flower_auth})"
                )
            if settings.api_metrics_port:
                metrics = f"http://127.0.0.1:{settings.api_metrics_port}/metrics"
                console.print(f"metrics {metrics}  (workers: {metrics}/targets)")
            console.print("Ctrl-C stops everything.")
            while True:
                stack.supervise()
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    except StackError as exc:
        fail(str(exc))


def demo(
    port: Annotated[int, typer.Option(help="API port for the demo stack.")] = 0,
    model: Annotated[str, typer.Option()] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option()] = 48,
) -> None:
    """Start the stack, run a set of prompts through the HTTP API on a real model, print results."""
    from cli.demo import run_demo
    from cli.devstack import StackError, free_port

    try:
        run_demo(console, port=port or free_port(), model=model, max_tokens=max_tokens)
    except StackError as exc:
        fail(str(exc))
