"""The exact cache's answer time: `POST /v1/jobs` of a job the cache answers, whose response
is the final job, so the submit's round trip is the whole submit → result latency."""

from __future__ import annotations

import statistics
import time
import uuid

import httpx

from bench.report import Figure, Goal
from llmq.models import ACTIVE_STATUSES

MODEL = "echo"
GOAL_P50_MS = 10


def hit_latency_ms(client: httpx.Client, hits: int, wait_s: float = 30) -> dict:
    """Run one greedy echo job, wait until its answer is kept, then time `hits` submits of
    it one after another; needs an echo worker."""
    body = {"model": MODEL, "prompt": f"cached {uuid.uuid4().hex}", "temperature": 0}
    job = client.post("/v1/jobs", json=body).raise_for_status().json()
    while job["status"] in ACTIVE_STATUSES:
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).raise_for_status().json()
    deadline = time.monotonic() + wait_s  # the worker keeps the answer after its commit
    while not client.post("/v1/jobs", json=body).raise_for_status().json()["cached"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the echo job's answer was never kept in the exact cache")
        time.sleep(0.05)
    times = []
    for _ in range(hits):
        started = time.perf_counter()
        hit = client.post("/v1/jobs", json=body).raise_for_status().json()
        times.append((time.perf_counter() - started) * 1000)
        assert hit["cached"] and hit["status"] == "succeeded"
    times.sort()
    return {
        "hits": hits,
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
    }


def figure(r: dict) -> Figure:
    return Figure(
        "Cache hit submit → result", r["p50_ms"],
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms",
        f"POST /v1/jobs of a greedy echo job the exact cache answers (the response is the "
        f"final job), {r['hits']} in a row from one client",
        Goal("≤", GOAL_P50_MS, " ms", subject="p50"),
    )  # fmt: skip
