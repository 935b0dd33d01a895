"""`llmq demo`: the main job end to end on a real model, through the HTTP API."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from decimal import Decimal

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.devstack import Stack
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import ACTIVE_STATUSES, JobStatus
from llmq.settings import get_settings

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Give one tip for writing clean code.",
    "What does a CPU do, in one sentence?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a friendly robot.",
    "What is photosynthesis, briefly?",
    "List two benefits of regular exercise.",
    "What is the largest planet in the solar system?",
    "Explain what a queue is in computing, in one sentence.",
    "What colour is the sky on a clear day?",
    "Give a synonym for 'happy'.",
]


def run_demo(console: Console, *, port: int, model: str, max_tokens: int) -> None:
    settings = get_settings()
    started = time.perf_counter()
    stack = Stack(settings, port=port, models=[model], flower=False, log=console.print, quiet=True)
    console.print(f"starting the stack (process logs in {stack.log_dir})")
    with stack:
        key = _make_key(stack)
        console.print(
            f"stack up in {time.perf_counter() - started:.1f}s; submitting {len(PROMPTS)} prompts"
        )
        with httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            t0 = time.perf_counter()
            ids = []
            for prompt in PROMPTS:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                response = client.post("/v1/jobs", json=body)
                response.raise_for_status()
                ids.append(response.json()["id"])
            results = _wait_all(client, ids)
            wall = time.perf_counter() - t0
            usage = client.get("/v1/usage", params={"group_by": "model"}).json()
    _report(console, results, wall, usage, time.perf_counter() - started)


def _make_key(stack: Stack) -> str:
    import llmq.db

    llmq.db.get_engine.cache_clear()
    llmq.db._sessionmaker.cache_clear()
    url = stack.env["LLMQ_DATABASE_URL"]
    with session_scope(url) as session:
        _, plain = create_key(session, "demo")
    return plain


def _wait_all(client: httpx.Client, ids: list[str]) -> list[dict]:
    results: dict[str, dict] = {}
    columns = (TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    def wait_one(job_id: str) -> dict:
        while True:
            job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            if job["status"] not in ACTIVE_STATUSES:
                return job

    with Progress(*columns) as progress, ThreadPoolExecutor(len(ids)) as pool:
        task = progress.add_task("jobs", total=len(ids))
        for future in as_completed(pool.submit(wait_one, i) for i in ids):
            job = future.result()
            results[job["id"]] = job
            progress.advance(task)
    return [results[i] for i in ids]


def _report(console: Console, results: list[dict], wall: float, usage: dict, total: float) -> None:
    table = Table(title="Answers", show_lines=True)
    for column in ("prompt", "answer", "tokens (in+out)", "cost USD", "batch"):
        table.add_column(column)
    completion = 0
    for prompt, job in zip(PROMPTS, results, strict=True):
        if job["status"] != JobStatus.SUCCEEDED:
            table.add_row(prompt, f"[red]{job['status']}: {job['error']}[/red]", "", "", "")
            continue
        u = job["usage"]
        completion += u["completion_tokens"]
        table.add_row(
            prompt,
            job["output"]["text"].strip(),
            f"{u['prompt_tokens']}+{u['completion_tokens']}",
            u["cost_usd"],
            str(job["timings"]["batch_size"]),
        )
    console.print(table)
    summary = Table(title="Usage from the ledger")
    for column in ("model", "jobs", "prompt tokens", "completion tokens", "cost USD"):
        summary.add_column(column)
    for row in usage["data"]:
        summary.add_row(
            row["model"], str(row["jobs"]), str(row["prompt_tokens"]),
            str(row["completion_tokens"]), str(Decimal(row["cost_usd"])),
        )  # fmt: skip
    console.print(summary)
    ok = sum(1 for j in results if j["status"] == JobStatus.SUCCEEDED)
    console.print(
        f"{ok}/{len(results)} succeeded; {completion} tokens generated in {wall:.1f}s "
        f"= {completion / wall:.1f} tokens/s through API, Redis, worker and Postgres "
        f"(whole demo {total:.1f}s)"
    )
