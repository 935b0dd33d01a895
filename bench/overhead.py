"""Figure 3: llmq's own overhead with the `echo` engine, against no-op Celery tasks; submit rates
and submit-to-visible latency at a steady load."""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis
import sqlalchemy as sa

from bench.env import BenchEnv, Proc


def echo_jobs_per_s(client: httpx.Client, count: int) -> float:
    from llmq.db import session_scope
    from llmq.models import Job

    def succeeded() -> int:
        with session_scope() as session:
            return session.scalar(
                sa.select(sa.func.count()).where(Job.model == "echo", Job.status == "succeeded")
            )

    before = succeeded()
    items = [{"model": "echo", "prompt": f"job {i}", "max_tokens": 4} for i in range(count)]
    started = time.perf_counter()
    client.post("/v1/jobs/bulk", json={"jobs": items}, timeout=120).raise_for_status()
    while succeeded() < before + count:
        time.sleep(0.05)
    return count / (time.perf_counter() - started)


class NoopWorker:
    """A Celery worker of no-op tasks (threads, `concurrency`), kept up across runs so that
    each run beside an echo run measures tasks, not a worker's start."""

    def __init__(self, env: BenchEnv, concurrency: int):
        from bench.noop import COUNTER, app

        argv = [sys.executable, "-m", "celery", "-A", "bench.noop", "worker", "-P", "threads",
                "-c", str(concurrency), "--prefetch-multiplier", "1", "-Q", "bench.noop",
                "-l", "WARNING", "--without-mingle", "--without-gossip"]  # fmt: skip
        self.app, self.counter = app, COUNTER
        self.worker = Proc(argv, env.env, env.dir / "noop.log")
        self.client = redis.Redis.from_url(env.redis_url)
        self.client.set(COUNTER, 0)
        app.send_task("bench.noop", queue="bench.noop")  # the worker is consuming once it ran
        self._wait_for(1)

    def _wait_for(self, count: int) -> None:
        while int(self.client.get(self.counter) or 0) < count:
            time.sleep(0.02)

    def tasks_per_s(self, count: int) -> float:
        self.client.set(self.counter, 0)
        started = time.perf_counter()
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for _ in range(count):
                self.app.send_task("bench.noop", queue="bench.noop", producer=producer)
        self._wait_for(count)
        return count / (time.perf_counter() - started)

    def stop(self) -> None:
        self.worker.stop()


BULK_RUNS = 5  # bulk requests in a row; the figure is their median


def submit_rates(
    client: httpx.Client, count: int, threads: int, bulk_count: int
) -> tuple[float, float]:
    """Jobs/s through single submits from `threads` threads, and through a bulk request (the
    median of `BULK_RUNS`)."""
    body = {"model": "echo-unserved", "prompt": "rate", "max_tokens": 1}
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(lambda _: client.post("/v1/jobs", json=body).raise_for_status(), range(count))
        )
    single = count / (time.perf_counter() - started)
    bulk = {"jobs": [body] * bulk_count}
    bulk_runs = []
    for _ in range(BULK_RUNS):
        started = time.perf_counter()
        client.post("/v1/jobs/bulk", json=bulk, timeout=120).raise_for_status()
        bulk_runs.append(bulk_count / (time.perf_counter() - started))
    return single, statistics.median(bulk_runs)


def steady_latency_ms(client: httpx.Client, jobs_per_s: float, seconds: float) -> list[float]:
    """Submit at a fixed rate; each job's time from submit until its result is visible,
    sorted."""
    body = {"model": "echo", "prompt": "latency", "max_tokens": 2}

    def one(_: int) -> float:
        started = time.perf_counter()
        job = client.post("/v1/jobs", json=body).json()
        while job["status"] in ("queued", "running"):
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        return (time.perf_counter() - started) * 1000

    total = int(jobs_per_s * seconds)
    futures = []
    with ThreadPoolExecutor(64) as pool:
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i / jobs_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
        return sorted(f.result() for f in futures)


def p50_p99(sorted_ms: list[float]) -> tuple[float, float]:
    return statistics.median(sorted_ms), sorted_ms[max(0, int(len(sorted_ms) * 0.99) - 1)]
