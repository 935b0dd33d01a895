"""A large OpenAI batch through llmq: time to validate and enqueue it (`POST /v1/batches`
answers `in_progress` once every job is written to the backlog), to run every job (fed to
the queue by the leader's feeder, here on a thread), and to
finalize it (from the last job's `finished_at` to the batch's `completed_at`, both read from
Postgres). A webhook worker finalizes the batch when its last job's results send
`llmq.batch.finalize`; the sweeper's pass, on its own thread at `sweeper_interval_s` as the
leader runs it, is the net.

`python -m bench.batches [LINES]` runs it alone with one echo worker on a private database.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import redis
import sqlalchemy as sa

from bench.env import BenchEnv, run_alone, webhook_sender
from bench.report import Figure, Goal
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.models import ACTIVE_STATUSES, Batch, Job
from llmq.pools import backlogs
from llmq.queues import make_celery
from llmq.settings import get_settings
from scheduler.feeder import Feeder
from scheduler.sweeper import Sweeper

MODEL = "echo"
GOAL_ENQUEUE_S = 5
GOAL_FINALIZE_S = 2


def batch_file(lines: int, max_tokens: int) -> bytes:
    body = {"model": MODEL, "max_tokens": max_tokens}
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body | {"messages": [{"role": "user", "content": f"line {i} of the batch"}]}}
                   ).encode() + b"\n"
        for i in range(lines)
    )  # fmt: skip


@dataclass
class LeaderThread:
    """The scheduler leader's feeder (a round every `feeder_interval_s`) and sweeper (a pass
    every `interval_s`) for `models`; remembers how long the pass that finalized a batch
    took."""

    interval_s: float
    models: tuple[str, ...] = (MODEL,)
    finalizing_pass_s: float = 0.0

    def __post_init__(self) -> None:
        settings = get_settings()
        self.settings, self.client = settings, redis.Redis.from_url(settings.redis_url)
        celery = make_celery(settings)
        self.sweeper = Sweeper(settings, self.client, celery)
        self.feeder = Feeder(settings, get_catalog(), self.client, celery)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.interval_s
        while not self.stop.wait(self.settings.feeder_interval_s):
            queues = backlogs(self.client, self.settings.redis_prefix, list(self.models))
            self.feeder.feed(queues, bound_ttl_s=5)
            if time.monotonic() < next_sweep:
                continue
            next_sweep = time.monotonic() + self.interval_s
            started = time.perf_counter()
            if self.sweeper.sweep().batches_finalized:
                self.finalizing_pass_s = time.perf_counter() - started

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _ended_at(batch_id: str) -> tuple[int, float | None, float | None]:
    """Active jobs left, the last job's finished_at, the batch's completed_at (epoch s)."""
    with session_scope() as session:
        active, last = session.execute(
            sa.select(sa.func.count().filter(Job.status.in_(ACTIVE_STATUSES)),
                      sa.func.max(Job.finished_at)).where(Job.batch_id == batch_id)
        ).one()  # fmt: skip
        completed = session.scalar(sa.select(Batch.completed_at).where(Batch.id == batch_id))
    return active, last and last.timestamp(), completed and completed.timestamp()


def batch_run(
    env: BenchEnv, client: httpx.Client, lines: int, max_tokens: int, timeout_s: float = 900
) -> dict:
    """Upload, create and follow one batch of `lines` echo requests; needs an echo worker."""
    interval_s = get_settings().sweeper_interval_s
    data = batch_file(lines, max_tokens)
    started = time.perf_counter()
    files = {"file": ("bench.jsonl", data)}
    file_id = client.post("/v1/files", files=files, data={"purpose": "batch"}).raise_for_status()
    upload_s = time.perf_counter() - started
    sweeper, finalizer = LeaderThread(interval_s), webhook_sender(env)
    try:
        body = {"input_file_id": file_id.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}  # fmt: skip
        started = time.perf_counter()
        batch = client.post("/v1/batches", json=body).raise_for_status().json()
        enqueue_s = time.perf_counter() - started
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch is {batch['status']}: {batch.get('errors')}")
        deadline = time.monotonic() + timeout_s
        while (ended := _ended_at(batch["id"]))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        finish_s = time.perf_counter() - started
        while (ended := _ended_at(batch["id"]))[2] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if ended[2] is None:
            raise RuntimeError(f"batch {batch['id']} did not end within {timeout_s:g} s")
    finally:
        sweeper.close()
        finalizer.stop()
    return {
        "lines": lines, "max_tokens": max_tokens, "bytes": len(data), "upload_s": upload_s,
        "enqueue_s": enqueue_s, "finish_s": finish_s, "finalize_s": ended[2] - ended[1],
        "interval_s": interval_s, "finalizing_pass_s": sweeper.finalizing_pass_s,
    }  # fmt: skip


def figures(r: dict) -> list[Figure]:
    n = r["lines"]
    what = f"a {n:,}-line batch (chat completions, echo, max_tokens {r['max_tokens']})"
    return [
        Figure("Batch validate + enqueue", r["enqueue_s"], f"{r['enqueue_s']:.1f} s",
               f"POST /v1/batches of {what} until it answers in_progress; the "
               f"{r['bytes'] / 1e6:.1f} MB upload before it took {r['upload_s']:.1f} s",
               Goal("≤", GOAL_ENQUEUE_S, " s")),
        Figure("Batch finish", r["finish_s"], f"{r['finish_s']:.1f} s ({n / r['finish_s']:.0f} jobs/s)",
               f"{what}: from POST /v1/batches until every job ended, one echo worker"),
        Figure("Batch finalize", r["finalize_s"], f"{r['finalize_s']:.1f} s",
               f"the last job's finished_at → the batch's completed_at (Postgres); a webhook "
               f"worker finalizes on the last results' llmq.batch.finalize, the sweeper's pass "
               f"(every {r['interval_s']:g} s) as the net"
               + (f", which finalized it in a {r['finalizing_pass_s']:.1f} s pass"
                  if r["finalizing_pass_s"] else ""),
               Goal("≤", GOAL_FINALIZE_S, " s")),
    ]  # fmt: skip


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    result = run_alone(MODEL, lambda env, client: batch_run(env, client, count, max_tokens=4))
    for shown in figures(result):
        print(f"{shown.name}: {shown.shown} (goal {shown.goal or '-'}) — {shown.how}")
