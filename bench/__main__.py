"""`make bench`: run every benchmark side by side, print the table, write BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import signal
import statistics
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench import overhead, pipeline
from bench.env import ROOT, BenchEnv, api, wait_for_worker, worker
from cli.devstack import free_port

console = Console()
PAIRED_RUNS = 5  # pipeline and bare generate, taken in turns so each pair sees the same machine


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def cold_start(
    env: BenchEnv, client: httpx.Client, cached_runs: int = 3
) -> tuple[float, float, list[float]]:
    """Seconds from starting a worker process to its first finished job: with an empty cache,
    then the median of `cached_runs` starts from the cache (and each of them)."""
    cache = env.dir / "cache"
    times = []
    for _ in range(1 + cached_runs):
        body = {"model": "smollm2-cold", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        job = client.post("/v1/jobs", json=body).json()
        started = time.perf_counter()
        proc = worker(env, "smollm2-cold", {"LLMQ_CACHE_DIR": str(cache)})
        while job["status"] in ("queued", "running"):
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        times.append(time.perf_counter() - started)
        proc.stop()
    return times[0], statistics.median(times[1:]), times[1:]


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    env = BenchEnv(batch=32)
    env.setup()
    port = free_port()
    api_proc = api(env, port)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {env.key()}"},
        timeout=300,
    )
    r: dict = {}
    try:
        console.print("cold start…")
        r["cold"] = cold_start(env, client)

        console.print("pipeline at batch 32, bare generate, one at a time…")
        w = worker(env, "smollm2-135m")
        wait_for_worker(env, "smollm2-135m")
        bare = pipeline.BareGenerate(pipeline.PROMPTS)
        pipeline.run_jobs(client, "smollm2-135m", pipeline.PROMPTS, concurrent=True)  # warm up
        bare.run()  # both sides have run the full batch once
        runs, bare_runs = [], []
        for _ in range(PAIRED_RUNS):
            runs.append(pipeline.run_jobs(client, "smollm2-135m", pipeline.PROMPTS, True))
            bare_runs.append(bare.run())
        del bare
        r["batched"], r["bare"] = pipeline.median_run(runs), pipeline.median_run(bare_runs)
        r["ratios"] = [
            p["tokens_per_s"] / b["tokens_per_s"] for p, b in zip(runs, bare_runs, strict=True)
        ]
        r["serial"] = pipeline.run_jobs(client, "smollm2-135m", pipeline.PROMPTS[:6], False)
        r["rss_mb"] = w.peak_rss_mb()
        w.stop()
        console.print("continuous batching engine…")
        w = worker(env, "smollm2-continuous")
        wait_for_worker(env, "smollm2-continuous")
        pipeline.run_jobs(client, "smollm2-continuous", pipeline.PROMPTS[:4], concurrent=True)
        r["continuous"] = pipeline.run_jobs(client, "smollm2-continuous", pipeline.PROMPTS, True)
        w.stop()

        console.print("overhead with the echo engine…")
        e = worker(env, "echo")
        wait_for_worker(env, "echo")
        overhead.echo_jobs_per_s(client, 200)  # warm up
        r["echo"] = statistics.median(overhead.echo_jobs_per_s(client, 2000) for _ in range(3))
        r["noop"] = statistics.median(overhead.noop_tasks_per_s(env, 2000) for _ in range(3))
        r["p50"], r["p99"] = overhead.steady_latency_ms(client, jobs_per_s=40, seconds=10)
        r["submit"], r["bulk"] = overhead.submit_rates(client, 400)
        e.stop()
    finally:
        client.close()
        api_proc.stop()
        env.teardown()
    write(r)


def write(r: dict) -> None:
    b, s, bare = r["batched"], r["serial"], r["bare"]
    rows = [
        ("Pipeline efficiency", f"{statistics.median(r['ratios']):.2f}", "≥ 0.90",
         f"{b['tokens_per_s']:.0f} tok/s through API→Redis→worker→Postgres (32 jobs, batches {b['batch_sizes']}) "
         f"/ {bare['tokens_per_s']:.0f} tok/s bare batched generate (32 prompts); {PAIRED_RUNS} runs of each taken in turns, the median of the pair ratios {', '.join(f'{x:.2f}' for x in r['ratios'])}; the tok/s are the medians of each side"),
        ("Batching gain", f"{b['tokens_per_s'] / s['tokens_per_s']:.1f}x", "≥ 6x",
         f"{b['tokens_per_s']:.0f} tok/s with 32 concurrent jobs / {s['tokens_per_s']:.0f} tok/s one at a time"),
        ("Continuous / static batching", f"{r['continuous']['tokens_per_s'] / b['tokens_per_s']:.2f}", "",
         f"{r['continuous']['tokens_per_s']:.0f} tok/s with the hf-continuous engine / {b['tokens_per_s']:.0f} tok/s "
         "with hf, same 32 jobs through the pipeline (auto picks hf-continuous on CUDA only)"),
        ("Overhead", f"{r['echo'] / r['noop']:.2f}", "≥ 0.6",
         f"{r['echo']:.0f} echo jobs/s end to end / {r['noop']:.0f} no-op Celery tasks/s (threads -c 64)"),
        ("Submit rate", f"{r['submit']:.0f} jobs/s", "",
         f"POST /v1/jobs, 8 client threads; bulk route {r['bulk']:.0f} jobs/s (5,000 per request)"),
        ("Submit → result visible", f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms", "",
         "echo engine, 40 jobs/s for 10 s, long-poll"),
        ("Cold start", f"{r['cold'][0]:.1f} s first, {r['cold'][1]:.1f} s cached", "cached < 4 s",
         "worker process start → first finished job (SmolLM2; the first start dequantizes the GGUF; cached: median of " + ", ".join(f"{t:.1f}" for t in r["cold"][2]) + " s)"),
        ("Memory", f"{r['rss_mb']:.0f} MB", "",
         "peak resident memory of the SmolLM2 worker after batches of 32"),
    ]  # fmt: skip
    table = Table(title="llmq benchmarks")
    for col in ("figure", "measured", "goal", "how"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    lines = [
        "# Benchmarks",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        "- Command: `make bench` (`python -m bench`)",
        f"- Model: SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32), greedy, "
        f"max_tokens {pipeline.NEW_TOKENS}; worker batch limit 32, max_batch_wait_ms 1000, batch_settle_ms 300",
        "",
        "| figure | measured | goal | how |",
        "| --- | --- | --- | --- |",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "Every ratio is measured side by side in the same run; the figures are this machine's "
        "and move with its load.",
        "",
    ]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    console.print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
