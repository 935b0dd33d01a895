"""The OpenAI surface's cost: the same echo jobs through `POST /v1/chat/completions` (one
request that waits) and through `POST /v1/jobs` then `GET /v1/jobs/{id}?wait` (llmq's own
path), taken in turns so each pair sees the same machine."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from llmq.models import ACTIVE_STATUSES

MODEL = "echo"


def _through_jobs(client: httpx.Client, i: int) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"turn {i}"}], "max_tokens": 8}
    job = client.post("/v1/jobs", json=body).raise_for_status().json()
    while job["status"] in ACTIVE_STATUSES:
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).raise_for_status().json()


def _through_chat(client: httpx.Client, i: int) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"turn {i}"}], "max_tokens": 8}
    client.post("/v1/chat/completions", json=body).raise_for_status()


def _rate(client: httpx.Client, one, requests: int, threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: one(client, i), range(requests)))
    return requests / (time.perf_counter() - started)


def chat_vs_jobs(
    client: httpx.Client, requests: int, threads: int, pairs: int
) -> dict[str, list[float]]:
    """Requests/s of each path, run by run (`chat[i]` and `jobs[i]` are a pair); needs an
    echo worker."""
    _rate(client, _through_chat, threads, threads)  # warm both paths
    _rate(client, _through_jobs, threads, threads)
    chat, jobs = [], []
    for _ in range(pairs):
        chat.append(_rate(client, _through_chat, requests, threads))
        jobs.append(_rate(client, _through_jobs, requests, threads))
    return {"chat_per_s": chat, "jobs_per_s": jobs}
