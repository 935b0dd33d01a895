"""Commands that talk to the HTTP API with the CLI's key: status, usage, submit, get."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer

from cli.common import check, client, console
from llmq.models import ACTIVE_STATUSES, JobStatus


def status() -> None:
    """Per pool: desired and actual replicas, waiting, in flight, oldest wait, circuit."""
    from rich.table import Table

    with client() as api:
        models = check(api.get("/v1/models"))["data"]
    table = Table(
        "model", "desired", "actual", "waiting", "in flight", "oldest wait", "workers", "circuit"
    )
    for m in (m for m in models if "live" in m):  # aliases have no pool of their own
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
            m.get("circuit", "-"),
        )
    console.print(table)


def _dash(value) -> str:
    return "-" if value is None else str(value)


def usage(
    group_by: Annotated[
        str, typer.Option(help="model, day, key or variant (see also `llmq ab report`).")
    ] = "model",
    start: Annotated[str | None, typer.Option(help="ISO-8601 start (included).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO-8601 end (excluded).")] = None,
) -> None:
    """Print usage and cost from the ledger as a table (through the API, for the CLI's key)."""
    from rich.table import Table

    params = (
        {"group_by": group_by} | ({"start": start} if start else {}) | ({"end": end} if end else {})
    )
    with client() as api:
        body = check(api.get("/v1/usage", params=params))
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
    with client() as api:
        job = check(api.post("/v1/jobs", json=body))
        if stream:
            job = _stream_job(api, job["id"])
            console.print()
            _print_usage(job)
            return
        if not wait:
            print(job["id"])
            return
        with console.status(f"job {job['id']} queued…") as progress:
            while job["status"] in ACTIVE_STATUSES:
                progress.update(f"job {job['id']} {job['status']}…")
                job = check(api.get(f"/v1/jobs/{job['id']}", params={"wait": 30}))
    _print_job(job)


def get(
    job_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the job to end.")] = 0,
) -> None:
    """Print a job as JSON."""
    with client() as api:
        print(json.dumps(check(api.get(f"/v1/jobs/{job_id}", params={"wait": wait})), indent=2))


def _stream_job(api: httpx.Client, job_id: str) -> dict:
    """Print the job's text from its server-sent events; returns the final job."""
    from httpx_sse import connect_sse

    with connect_sse(api, "GET", f"/v1/jobs/{job_id}/events", timeout=None) as source:
        for event in source.iter_sse():
            if event.event == "token":
                console.print(json.loads(event.data)["text"], end="", markup=False, highlight=False)
            elif event.event == "job":
                return json.loads(event.data)
    return check(api.get(f"/v1/jobs/{job_id}"))


def _print_usage(job: dict) -> None:
    if job["status"] != JobStatus.SUCCEEDED:
        console.print(f"[red]{job['status']}[/red] {json.dumps(job.get('error'))}")
        return
    usage = job["usage"]
    ran = "from the cache" if job.get("cached") else f"batch of {job['timings']['batch_size']}"
    console.print(
        f"[dim]{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, "
        f"${usage['cost_usd']}, {ran}[/dim]"
    )


def _print_job(job: dict) -> None:
    if job["status"] == JobStatus.SUCCEEDED:
        console.print(job["output"]["text"])
    _print_usage(job)
