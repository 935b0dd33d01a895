"""Memory while a very large batch is admitted and worked: the API's, a worker's, Redis's.

The API admits the input file in flat memory (it streams line by line, writing jobs in
chunks: `llmq.batches.records.create_batch`), the feeder keeps only what the pool can use on
Redis (`LLMQ_FEEDER_QUEUE_DEPTH`), a worker holds one batch at a time, and the finalizer
streams the output files. Goals: the API's peak resident memory ≤ 150 MB above its idle, the
run's Redis keys ≤ 200 MB.

The file (1,000,000 lines by default) is uploaded and the batch created; then the leader's
feeder and one echo worker work through it for `work_s` seconds (one echo worker finishes
a few hundred lines a second on a small machine: the whole file would take most of an
hour); then the batch is cancelled and finalized, which writes every line to its output or
error file. A sampler reads each process's resident memory and the bytes of the run's Redis
keys (`MEMORY USAGE`, so other users of the server do not count) throughout.

`python -m bench.batch_memory [LINES] [WORK_S]` runs it alone on a private database.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from bench.batches import MODEL, LeaderThread
from bench.env import BenchEnv, Proc, api, wait_for_worker, worker
from bench.report import Figure, Goal

GOAL_API_MB = 150
GOAL_REDIS_MB = 200
SAMPLE_S = 0.25


def write_file(path: Path, lines: int) -> int:
    """A batch input file of `lines` chat requests, written in pieces; returns its size."""
    body = {"model": MODEL, "max_tokens": 2}
    with path.open("wb") as out:
        for start in range(0, lines, 10_000):
            out.write(b"".join(
                json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                            "body": body | {"messages": [{"role": "user", "content": f"line {i}"}]}}
                           ).encode() + b"\n"
                for i in range(start, min(lines, start + 10_000))
            ))  # fmt: skip
    return path.stat().st_size


def redis_bytes(client: redis.Redis, prefix: str) -> int:
    """The bytes Redis holds for this run's keys (every key carries the run's prefix)."""
    total = 0
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        total += client.memory_usage(key) or 0
    return total


class Sampler:
    """Peak resident memory of each named process (MB, above its level at start) and peak
    bytes of the run's Redis keys, read every `SAMPLE_S` on a thread."""

    def __init__(self, procs: dict[str, Proc], client: redis.Redis, prefix: str):
        self.procs, self.client, self.prefix = procs, client, prefix
        self.idle = {name: p.memory_mb("VmRSS") for name, p in procs.items()}
        self.peak = dict.fromkeys(procs, 0.0)
        self.redis_idle = redis_bytes(client, prefix)
        self.redis_peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            for name, proc in self.procs.items():
                used = proc.memory_mb("VmRSS") - self.idle[name]
                self.peak[name] = max(self.peak[name], used)
            used = redis_bytes(self.client, self.prefix) - self.redis_idle
            self.redis_peak = max(self.redis_peak, used)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _timed(step: Callable[[], httpx.Response]) -> tuple[dict, float]:
    started = time.perf_counter()
    body = step().raise_for_status().json()
    return body, time.perf_counter() - started


def batch_memory_run(
    env: BenchEnv, client: httpx.Client, api_proc: Proc, worker_proc: Proc, lines: int,
    work_s: float,
) -> dict:  # fmt: skip
    path = env.dir / "million.jsonl"
    size = write_file(path, lines)
    sampler = Sampler({"api": api_proc, "worker": worker_proc},
                      redis.Redis.from_url(env.redis_url), env.prefix)  # fmt: skip
    leader = None
    try:
        with path.open("rb") as f:
            upload, upload_s = _timed(lambda: client.post(
                "/v1/files", files={"file": ("million.jsonl", f)}, data={"purpose": "batch"}))  # fmt: skip
        body = {"input_file_id": upload["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}  # fmt: skip
        batch, create_s = _timed(lambda: client.post("/v1/batches", json=body, timeout=1800))
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch is {batch['status']}: {batch.get('errors')}")
        admitted_api_mb = sampler.peak["api"]
        print(f"admitted {lines:,} lines: upload {upload_s:.0f} s, create {create_s:.0f} s, "
              f"API +{admitted_api_mb:.0f} MB", file=sys.stderr)  # fmt: skip
        leader = LeaderThread(interval_s=2.0)
        time.sleep(work_s)
        done = client.get(f"/v1/batches/{batch['id']}").raise_for_status().json()
        _, cancel_s = _timed(lambda: client.post(f"/v1/batches/{batch['id']}/cancel"))
        deadline, ended = time.monotonic() + 1800, {"status": "cancelling"}
        while ended["status"] == "cancelling" and time.monotonic() < deadline:
            time.sleep(0.5)
            ended = client.get(f"/v1/batches/{batch['id']}").raise_for_status().json()
        if ended["status"] != "cancelled":
            raise RuntimeError(f"the batch did not end: {ended['status']}")
    finally:
        if leader is not None:
            leader.close()
        sampler.close()
    finished = done["request_counts"]["completed"]
    return {
        "lines": lines, "bytes": size, "upload_s": upload_s, "create_s": create_s,
        "work_s": work_s, "finished": finished, "cancel_s": cancel_s,
        "api_admit_mb": admitted_api_mb, "api_mb": sampler.peak["api"],
        "worker_mb": sampler.peak["worker"], "redis_mb": sampler.redis_peak / 1e6,
        "api_idle_mb": sampler.idle["api"], "worker_idle_mb": sampler.idle["worker"],
    }  # fmt: skip


def run(env: BenchEnv, port: int, lines: int, work_s: float) -> dict:
    """On a running bench environment: its own API process (allowed `lines` lines per batch)
    and one echo worker, stopped after."""
    big = {"LLMQ_MAX_BATCH_LINES": str(lines), "LLMQ_MAX_FILE_BYTES": str(2**31)}
    api_proc = api(env, port, workers=1, extra=big)  # one process: its memory is measured
    echo = worker(env, MODEL)
    try:
        wait_for_worker(env, MODEL)
        headers = {"Authorization": f"Bearer {env.key()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, headers=headers) as c:
            return batch_memory_run(env, c, api_proc, echo, lines, work_s)
    finally:
        echo.stop()
        api_proc.stop()


def figures(r: dict) -> list[Figure]:
    n = r["lines"]
    how = (f"a {n:,}-line batch ({r['bytes'] / 1e6:.0f} MB): upload {r['upload_s']:.0f} s, "
           f"POST /v1/batches {r['create_s']:.0f} s, then one echo worker for {r['work_s']:.0f} s "
           f"({r['finished']:,} lines finished), then cancelled and finalized (every line "
           f"written to the output or error file) in {r['cancel_s']:.1f} s")  # fmt: skip
    return [
        Figure("Batch memory: API", r["api_mb"], f"{r['api_mb']:.0f} MB above idle",
               f"peak resident memory of the API process above its idle "
               f"{r['api_idle_mb']:.0f} MB ({r['api_admit_mb']:.0f} MB while admitting); {how}",
               Goal("≤", GOAL_API_MB, " MB")),
        Figure("Batch memory: Redis", r["redis_mb"], f"{r['redis_mb']:.1f} MB",
               "peak bytes of the run's Redis keys (MEMORY USAGE) during the same run",
               Goal("≤", GOAL_REDIS_MB, " MB")),
        Figure("Batch memory: worker", r["worker_mb"], f"{r['worker_mb']:.0f} MB above idle",
               f"peak resident memory of the echo worker above its idle "
               f"{r['worker_idle_mb']:.0f} MB during the same run"),
    ]  # fmt: skip


if __name__ == "__main__":
    from cli.devstack import free_port

    bench_env = BenchEnv()
    bench_env.setup()
    try:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
        seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
        result = run(bench_env, free_port(), count, seconds)
    finally:
        bench_env.teardown()
    print(json.dumps(result))
    for shown in figures(result):
        print(f"{shown.name}: {shown.shown} (goal {shown.goal or '-'}) — {shown.how}")
