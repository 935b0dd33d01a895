"""The `llmq` command: local stack, workers, keys, usage, submit, get, demo."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Annotated

import httpx
import typer
from rich.console import Console

from llmq.settings import get_settings

app = typer.Typer(
    help="llmq: asynchronous LLM inference jobs on your own GPUs.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _require_secret_key() -> None:
    """Long-running processes share one key for webhook secrets: never a local one of their own."""
    from cryptography.fernet import Fernet

    key = get_settings().secret_key
    if not key:
        _fail("set LLMQ_SECRET_KEY (a Fernet key; see docs/settings.md)")
    try:
        Fernet(key)
    except ValueError:
        _fail("LLMQ_SECRET_KEY is not a Fernet key (urlsafe base64 of 32 bytes)")


def _client(api_url: str | None = None, api_key: str | None = None) -> httpx.Client:
    settings = get_settings()
    key = api_key or settings.api_key
    if not key:
        _fail("no API key: set LLMQ_API_KEY (create one with `llmq keys create --name NAME`)")
    return httpx.Client(
        base_url=api_url or settings.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=90
    )


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = body.get("detail", "")
            fields = ", ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
            _fail(f"{response.status_code} {body.get('title', '')}: {fields or detail}")
        except ValueError:
            _fail(f"{response.status_code}: {response.text[:200]}")
    return response.json()


# -- processes ------------------------------------------------------------------------------


@app.command()
def worker(
    model: Annotated[str, typer.Option(help="Catalog model to serve.")],
    concurrency: Annotated[
        int | None, typer.Option(help="Task threads (default: max_batch_size).")
    ] = None,
    node: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run one worker process for MODEL: Celery threads pool on the model's queue."""
    _require_secret_key()
    from llmq.catalog import get_catalog
    from llmq.queues import queue_name

    spec = get_catalog().get(model)
    node = node or f"{model}-{os.getpid()}@%h"
    argv = [
        "worker", "--model", model, "-P", "threads", "-c", str(concurrency or spec.max_batch_size),
        "--prefetch-multiplier", "1", "-Q", queue_name(model), "-n", node, "-E",
        "--without-mingle", "--without-gossip", "-l", loglevel,
    ]  # fmt: skip
    from workers.app import run_worker

    code = run_worker(argv)  # in this process: no second interpreter start
    if code:
        raise typer.Exit(code)


@app.command("webhook-worker")
def webhook_worker(
    concurrency: Annotated[int, typer.Option(help="Deliveries in parallel.")] = 8,
    node: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a webhook sender: Celery threads pool on `llmq.webhooks`; loads no model."""
    _require_secret_key()
    from llmq.queues import WEBHOOK_QUEUE

    node = node or f"webhooks-{os.getpid()}@%h"
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.webhook_app", "worker",
        "-P", "threads", "-c", str(concurrency), "--prefetch-multiplier", "1",
        "-Q", WEBHOOK_QUEUE, "-n", node, "--without-mingle", "--without-gossip", "-l", loglevel,
    ]  # fmt: skip
    os.execv(sys.executable, argv)


@app.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Run the HTTP API (uvicorn); its metrics are on LLMQ_API_METRICS_PORT."""
    _require_secret_key()
    import uvicorn

    uvicorn.run("api.app:create_app", factory=True, host=host, port=port)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="Port (default LLMQ_FLOWER_PORT).")] = None,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    loglevel: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Run Flower on the Celery app, with basic auth, bounded memory and offline workers purged."""
    from llmq.flower import flower_argv, flower_env

    settings = get_settings()
    if not settings.flower_basic_auth:
        _fail("set LLMQ_FLOWER_BASIC_AUTH=user:password (Flower's API is off without auth)")
    argv = flower_argv(settings, port=port, address=address, loglevel=loglevel)
    os.execve(sys.executable, argv, flower_env(settings, os.environ))


@app.command()
def scheduler(
    backend: Annotated[
        str | None, typer.Option(help="local or kubernetes (default: LLMQ_SCHEDULER_BACKEND).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Pools to manage (default: every catalog model).")
    ] = None,
) -> None:
    """Run the scheduler: resize each model's pool from its queue, and sweep lost jobs."""
    _require_secret_key()
    import logging
    import threading

    from prometheus_client import start_http_server

    from scheduler.main import build

    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if backend not in (None, "local", "kubernetes"):
        _fail(f"unknown backend {backend!r}: local or kubernetes")
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


@app.command()
def status() -> None:
    """Per pool: desired and actual replicas, waiting, in flight, oldest wait."""
    from rich.table import Table

    with _client() as client:
        models = _check(client.get("/v1/models"))["data"]
    table = Table("model", "desired", "actual", "waiting", "in flight", "oldest wait", "workers")
    for m in models:
        live, pool = m["live"], m["pool"]
        oldest = live.get("oldest_wait_s")
        table.add_row(
            m["id"],
            _dash(pool.get("desired_replicas")),
            _dash(pool.get("actual_replicas")),
            str(live["waiting"]),
            str(live["in_flight"]),
            f"{oldest:.1f}s" if oldest is not None else "-",
            str(live["workers"]),
        )
    console.print(table)


def _dash(value) -> str:
    return "-" if value is None else str(value)


@app.command()
def services() -> None:
    """Check that Redis and Postgres answer; say what to run when they do not."""
    from llmq.devstack import INSTALL_HINT, postgres_answers, redis_answers

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
        _fail(f"{' and '.join(missing)} not answering: start them, or {INSTALL_HINT}")
    console.print("Redis and Postgres answer")


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every migration."""
    from llmq.db import ensure_database
    from llmq.db import migrate as run_migrations

    url = get_settings().database_url
    if ensure_database(url):
        console.print("created the database")
    run_migrations(url)
    console.print("migrations applied")


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    model: Annotated[list[str] | None, typer.Option(help="Models to serve (default: all).")] = None,
    flower: Annotated[bool, typer.Option(help="Run Flower too.")] = True,
) -> None:
    """Run the local stack in the foreground, restarting a process that dies; Ctrl-C stops all."""
    from llmq.catalog import get_catalog
    from llmq.devstack import Stack, StackError

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
        _fail(str(exc))


# -- keys -----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    admin: Annotated[bool, typer.Option(help="May manage keys and see every key's usage.")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Jobs queued or running at once.")
    ] = None,
    budget_usd: Annotated[str | None, typer.Option(help="Spend limit per period, in USD.")] = None,
    budget_period: Annotated[str | None, typer.Option(help="day or month.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Default webhook endpoint.")] = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from decimal import Decimal, InvalidOperation

    from llmq import ssrf
    from llmq.db import session_scope
    from llmq.errors import InvalidField
    from llmq.keys import Limits, create_key, webhook_secret

    try:
        budget = Decimal(budget_usd) if budget_usd is not None else None
    except InvalidOperation:
        _fail(f"--budget-usd {budget_usd!r} is not a number")
    if webhook_url:
        try:
            ssrf.check_url(webhook_url, get_settings())
        except ssrf.UnsafeUrl as exc:
            _fail(f"--webhook-url: {exc}")
    limits = Limits(rpm, tpm, max_concurrent, budget, budget_period)
    try:
        with session_scope() as session:
            row, plain = create_key(session, name, admin, limits, webhook_url)
            secret = webhook_secret(row)
    except InvalidField as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc.message}")
    console.print("webhook signing secret (verify deliveries with it; shown only now):")
    print(secret)
    console.print(f"created key {row.prefix}… for {name!r}; it is shown only now:")
    print(plain)


@keys_app.command("list")
def keys_list() -> None:
    """Every key with its limits (never the key itself)."""
    from rich.table import Table

    from llmq.db import session_scope
    from llmq.keys import describe, list_keys

    with session_scope() as session:
        rows = [describe(r) for r in list_keys(session)]
    table = Table("id", "prefix", "name", "admin", "rpm", "tpm", "concurrent", "budget", "revoked")
    for r in rows:
        budget = f"${r['budget_usd']}/{r['budget_period']}" if r["budget_usd"] else ""
        table.add_row(
            r["id"], r["prefix"], r["name"], "yes" if r["admin"] else "",
            str(r["rpm"] or ""), str(r["tpm"] or ""), str(r["max_concurrent"] or ""),
            budget, r["revoked_at"] or "",
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(ident: Annotated[str, typer.Argument(help="Key id or display prefix.")]) -> None:
    """Revoke a key; its next request is refused."""
    from llmq.db import session_scope
    from llmq.errors import KeyNotFound
    from llmq.keys import revoke_key

    try:
        with session_scope() as session:
            row = revoke_key(session, ident)
    except KeyNotFound as exc:
        _fail(str(exc))
    console.print(f"revoked {row.prefix}… ({row.name})")


@app.command()
def usage(
    group_by: Annotated[str, typer.Option(help="model, day or key.")] = "model",
    start: Annotated[str | None, typer.Option(help="ISO-8601 start (included).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO-8601 end (excluded).")] = None,
) -> None:
    """Print usage and cost from the ledger as a table (through the API, for the CLI's key)."""
    from rich.table import Table

    params = (
        {"group_by": group_by} | ({"start": start} if start else {}) | ({"end": end} if end else {})
    )
    with _client() as client:
        body = _check(client.get("/v1/usage", params=params))
    table = Table(
        group_by, "jobs", "prompt tokens", "completion tokens", "cost USD", "GPU cost USD"
    )
    for row in body["data"]:
        table.add_row(
            str(row[group_by]), str(row["jobs"]), str(row["prompt_tokens"]),
            str(row["completion_tokens"]), row["cost_usd"], row["gpu_cost_usd"],
        )  # fmt: skip
    total = body["total"]
    table.add_row(
        "total", str(total["jobs"]), str(total["prompt_tokens"]),
        str(total["completion_tokens"]), total["cost_usd"], total["gpu_cost_usd"], style="bold",
    )  # fmt: skip
    console.print(table)


# -- jobs -----------------------------------------------------------------------------------


@app.command()
def submit(
    model: Annotated[str, typer.Option(help="Catalog model.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    raw: Annotated[bool, typer.Option(help="Send as a raw prompt, not a chat message.")] = False,
    max_tokens: Annotated[int | None, typer.Option()] = None,
    temperature: Annotated[float, typer.Option()] = 0.0,
    priority: Annotated[int, typer.Option(help="0 (normal) to 9 (most urgent).")] = 0,
    wait: Annotated[bool, typer.Option(help="Wait, with a progress display.")] = False,
    stream: Annotated[bool, typer.Option(help="Print the text as it is generated.")] = False,
) -> None:
    """Submit a job; prints its id, or waits (or streams) and prints the answer."""
    body: dict = {"model": model, "temperature": temperature, "priority": priority}
    body |= {"prompt": prompt} if raw else {"messages": [{"role": "user", "content": prompt}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    with _client() as client:
        job = _check(client.post("/v1/jobs", json=body))
        if stream:
            job = _stream_job(client, job["id"])
            console.print()
            _print_usage(job)
            return
        if not wait:
            print(job["id"])
            return
        with console.status(f"job {job['id']} queued…") as status:
            while job["status"] in ("queued", "running"):
                status.update(f"job {job['id']} {job['status']}…")
                job = _check(client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}))
    _print_job(job)


@app.command()
def get(
    job_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the job to end.")] = 0,
) -> None:
    """Print a job as JSON."""
    with _client() as client:
        print(json.dumps(_check(client.get(f"/v1/jobs/{job_id}", params={"wait": wait})), indent=2))


def _stream_job(client: httpx.Client, job_id: str) -> dict:
    """Print the job's text from its server-sent events; returns the final job."""
    from httpx_sse import connect_sse

    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", timeout=None) as source:
        for event in source.iter_sse():
            if event.event == "token":
                console.print(json.loads(event.data)["text"], end="", markup=False, highlight=False)
            elif event.event == "job":
                return json.loads(event.data)
    return _check(client.get(f"/v1/jobs/{job_id}"))


def _print_usage(job: dict) -> None:
    if job["status"] != "succeeded":
        console.print(f"[red]{job['status']}[/red] {json.dumps(job.get('error'))}")
        return
    usage = job["usage"]
    console.print(
        f"[dim]{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, "
        f"${usage['cost_usd']}, batch of {job['timings']['batch_size']}[/dim]"
    )


def _print_job(job: dict) -> None:
    if job["status"] == "succeeded":
        console.print(job["output"]["text"])
    _print_usage(job)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="API port for the demo stack.")] = 0,
    model: Annotated[str, typer.Option()] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option()] = 48,
) -> None:
    """Start the stack, run a set of prompts through the HTTP API on a real model, print results."""
    from llmq.demo import run_demo
    from llmq.devstack import StackError, free_port

    try:
        run_demo(console, port=port or free_port(), model=model, max_tokens=max_tokens)
    except StackError as exc:
        _fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
