"""Peak memory of one API process above idle while it takes a large upload to
`POST /v1/files`, and the upload's rate: the streaming path must not hold the file.

`python -m bench.uploads [MB]` runs it alone on a private database (the Postgres file store).
"""

from __future__ import annotations

import base64
import os
import sys
import threading
import time
from collections.abc import Iterator

import httpx

from bench.env import BenchEnv, api
from bench.report import Figure, Goal
from cli.devstack import free_port

BOUNDARY = b"llmq-bench-boundary"
GOAL_ABOVE_IDLE_MB = 100


def _form(size_bytes: int) -> tuple[int, Iterator[bytes]]:
    """A form around a text file of `size_bytes` (random base64 lines, which Postgres cannot
    compress); its length and its bytes in ~1 MiB pieces."""
    head = (
        b'--%s\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    ) % (BOUNDARY, BOUNDARY)
    tail = b"\r\n--%s--\r\n" % BOUNDARY

    def pieces() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size_bytes:
            block = base64.encodebytes(os.urandom(786_432))[: size_bytes - sent]
            sent += len(block)
            yield block
        yield tail

    return len(head) + size_bytes + len(tail), pieces()


def upload_memory(env: BenchEnv, size_bytes: int) -> dict[str, float]:
    """Upload `size_bytes` to a fresh API process; RSS is sampled every 10 ms, and the
    kernel's high-water mark catches what sampling misses."""
    port = free_port()
    proc = api(env, port, workers=1)  # one process: its memory is the one measured
    try:
        url, headers = f"http://127.0.0.1:{port}/v1/files", {"Authorization": f"Bearer {env.key()}"}
        warm = httpx.post(
            url, headers=headers, files={"file": ("w", b"{}\n")}, data={"purpose": "batch"}
        )
        warm.raise_for_status()
        idle, hwm_before = proc.memory_mb("VmRSS"), proc.memory_mb("VmHWM")
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], proc.memory_mb("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        length, body = _form(size_bytes)
        started = time.perf_counter()
        answer = httpx.post(
            url,
            headers={
                **headers,
                "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}",
                "content-length": str(length),
            },
            content=body,
            timeout=600,
        )
        elapsed_s = time.perf_counter() - started
        done.set()
        sampler.join()
        answer.raise_for_status()
        hwm_after = proc.memory_mb("VmHWM")
        top = max(peak[0], hwm_after if hwm_after > hwm_before else 0.0)
        return {
            "idle_mb": idle,
            "above_idle_mb": top - idle,
            "mb_per_s": size_bytes / 1e6 / elapsed_s,
        }
    finally:
        proc.stop()


def figure(r: dict[str, float], size_bytes: int) -> Figure:
    return Figure(
        "Upload memory",
        r["above_idle_mb"],
        f"{r['above_idle_mb']:.0f} MB above idle, {r['mb_per_s']:.0f} MB/s",
        f"one API process takes a {size_bytes / 1e6:.0f} MB file on POST /v1/files "
        "(Postgres store); peak RSS above idle",
        Goal("≤", GOAL_ABOVE_IDLE_MB, " MB"),
    )


if __name__ == "__main__":
    size = int(float(sys.argv[1]) * 1e6) if len(sys.argv) > 1 else 200_000_000
    bench_env = BenchEnv()
    bench_env.setup()
    try:
        result = upload_memory(bench_env, size)
    finally:
        bench_env.teardown()
    shown = figure(result, size)
    print(f"{shown.name}: {shown.shown} (idle {result['idle_mb']:.0f} MB; goal {shown.goal})")
