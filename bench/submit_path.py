"""The submit path against its floor: `POST /v1/jobs` beside a bare FastAPI endpoint
(`bench.bare_submit`: one INSERT, one Redis LPUSH) served the same way, in turns so each pair
of runs sees the same machine."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from bench.env import BenchEnv, api
from bench.report import Figure, Goal, paired_ratio, ratio_figure
from cli.devstack import free_port

BODY = {"model": "echo-unserved", "prompt": "rate", "max_tokens": 1}


def jobs_per_s(client: httpx.Client, path: str, count: int, threads: int) -> float:
    """Single submits from `threads` client threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: client.post(path, json=BODY).raise_for_status(), range(count)))
    return count / (time.perf_counter() - started)


def submit_vs_bare(
    env: BenchEnv, client: httpx.Client, count: int, threads: int, pairs: int, workers: int
) -> dict:
    """Jobs/s through `client` (the API) and through the bare app, `pairs` runs of each in
    turns (the bare app started here with `workers` processes, as the API was)."""
    from bench.bare_submit import create_table, queue_key
    from llmq.db import get_engine

    create_table(get_engine())
    port = free_port()
    bare_proc = api(env, port, factory="bench.bare_submit:create_app", workers=workers)
    bare = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    try:
        jobs_per_s(client, "/v1/jobs", threads * 4, threads)  # warm both: pools, imports
        jobs_per_s(bare, "/submit", threads * 4, threads)
        ours, floor = [], []
        for _ in range(pairs):
            ours.append(jobs_per_s(client, "/v1/jobs", count, threads))
            floor.append(jobs_per_s(bare, "/submit", count, threads))
    finally:
        bare.close()
        bare_proc.stop()
        redis.Redis.from_url(env.redis_url).delete(queue_key(env.prefix))
    return {
        "ours_per_s": ours,
        "bare_per_s": floor,
        "count": count,
        "threads": threads,
        "workers": workers,
    }


def figure(r: dict) -> Figure:
    ours, bare = r["ours_per_s"], r["bare_per_s"]
    return ratio_figure(
        "Submit path", paired_ratio(ours, bare),
        f"{statistics.median(ours):.0f} jobs/s through POST /v1/jobs / "
        f"{statistics.median(bare):.0f} through a bare FastAPI endpoint (one INSERT, one Redis "
        f"LPUSH), medians, both under uvicorn with {r['workers']} worker process(es); "
        f"{r['count']} submits from {r['threads']} client threads per run",
        Goal("≥", 0.6),
    )  # fmt: skip
