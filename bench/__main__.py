"""`make bench`: run every benchmark side by side, print the table, write BENCHMARKS.md.

The table's "how" column is written from `Params` and the catalog the run used, and each goal
sits beside the figure it judges; `--fail-on-missed` turns a missed goal into exit status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench import (
    backlog,
    batches,
    cache,
    coldstart,
    openai_path,
    overhead,
    pipeline,
    report,
    scale,
    semantic,
    submit_path,
    uploads,
)
from bench.env import ROOT, BenchEnv, api, api_workers, wait_for_worker, worker
from bench.report import Figure, Goal
from cli.devstack import free_port
from llmq.catalog import ModelSpec, load_catalog

console = Console()


@dataclass(frozen=True)
class Params:
    """What a run does; the table describes the run from these, never from separate text."""

    batch: int = 32  # the worker's batch limit, and the jobs submitted at once
    paired_runs: int = 5  # pipeline and bare generate, in turns so each pair sees one machine
    serial_jobs: int = 6  # jobs run one after another for the batching gain
    cold_runs: int = 3  # starts from zero of each kind (warm template, plain process)
    echo_jobs: int = 2000  # per echo and no-op run
    echo_repeats: int = 3  # the median of this many runs
    noop_concurrency: int = 64  # threads of the no-op Celery worker
    steady_jobs_per_s: float = 40
    steady_seconds: float = 10
    submit_jobs: int = 400
    submit_threads: int = 8
    submit_pairs: int = 3  # POST /v1/jobs and the bare endpoint, in turns
    bulk_jobs: int = 5000  # in one bulk request
    chat_requests: int = 200  # per side of each chat/jobs pair
    chat_threads: int = 16
    chat_pairs: int = 3
    cache_hits: int = 500  # submits of one job the exact cache answers
    upload_bytes: int = 200_000_000  # one file to POST /v1/files
    batch_lines: int = 10_000  # one OpenAI batch through the echo engine
    batch_max_tokens: int = 4
    semantic_entries: int = 100_000  # random unit vectors in one semantic cache namespace
    semantic_lookups: int = 1000  # near-duplicate lookups, each beside a random one
    backlog_lines: int = 20_000  # another key's batch beside interactive jobs
    scale_rows: int = 1_000_000  # finished jobs and ledger rows for the flat-costs figure

    @property
    def prompts(self) -> list[str]:
        return pipeline.PROMPTS[: self.batch]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--fail-on-missed", action="store_true", help="exit 1 when a figure misses its goal"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    p = Params()
    env = BenchEnv(batch=p.batch)
    spec = load_catalog(env.catalog).get("smollm2-135m")
    env.setup()
    port = free_port()
    api_proc = api(env, port)
    auth = {"Authorization": f"Bearer {env.key()}"}
    # Every figure but the cache's measures jobs that run, so the exact cache is kept out.
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers=auth | {"Cache-Control": "no-store"},
        timeout=300,
    )
    r: dict = {}
    try:
        console.print("cold start from zero…")
        r["cold"] = coldstart.from_zero(env, client, p.cold_runs)

        console.print(f"pipeline at batch {p.batch}, bare generate, one at a time…")
        w = worker(env, "smollm2-135m")
        wait_for_worker(env, "smollm2-135m")
        bare = pipeline.BareGenerate(p.prompts)
        pipeline.run_jobs(client, "smollm2-135m", p.prompts, concurrent=True)  # warm up
        bare.run()  # both sides have run the full batch once
        runs, bare_runs = [], []
        for _ in range(p.paired_runs):
            runs.append(pipeline.run_jobs(client, "smollm2-135m", p.prompts, True))
            bare_runs.append(bare.run())
        del bare
        r["batched"], r["bare"] = pipeline.median_run(runs), pipeline.median_run(bare_runs)
        r["ratios"] = [
            run["tokens_per_s"] / b["tokens_per_s"] for run, b in zip(runs, bare_runs, strict=True)
        ]
        r["serial"] = pipeline.run_jobs(client, "smollm2-135m", p.prompts[: p.serial_jobs], False)
        r["rss_mb"] = w.peak_rss_mb()
        w.stop()
        console.print("continuous batching engine…")
        w = worker(env, "smollm2-continuous")
        wait_for_worker(env, "smollm2-continuous")
        pipeline.run_jobs(client, "smollm2-continuous", p.prompts[:4], concurrent=True)
        r["continuous"] = pipeline.run_jobs(client, "smollm2-continuous", p.prompts, True)
        w.stop()

        console.print("overhead with the echo engine…")
        e = worker(env, "echo")
        wait_for_worker(env, "echo")
        overhead.echo_jobs_per_s(client, 200)  # warm up
        r["echo"] = statistics.median(
            overhead.echo_jobs_per_s(client, p.echo_jobs) for _ in range(p.echo_repeats)
        )
        r["noop"] = statistics.median(
            overhead.noop_tasks_per_s(env, p.echo_jobs, p.noop_concurrency)
            for _ in range(p.echo_repeats)
        )
        r["p50"], r["p99"] = overhead.steady_latency_ms(
            client, jobs_per_s=p.steady_jobs_per_s, seconds=p.steady_seconds
        )
        r["submit"], r["bulk"] = overhead.submit_rates(
            client, p.submit_jobs, p.submit_threads, p.bulk_jobs
        )
        console.print("POST /v1/jobs and a bare endpoint, in turns…")
        r["submit_path"] = submit_path.submit_vs_bare(
            env, client, p.submit_jobs, p.submit_threads, p.submit_pairs, api_workers()
        )
        console.print("chat completions and /v1/jobs, in turns…")
        r["chat"] = openai_path.chat_vs_jobs(client, p.chat_requests, p.chat_threads, p.chat_pairs)
        console.print("exact cache hits…")
        with httpx.Client(base_url=client.base_url, headers=auth, timeout=300) as cached:
            r["cache"] = cache.hit_latency_ms(cached, p.cache_hits)
        console.print(f"a {p.batch_lines:,}-line batch…")
        r["batch"] = batches.batch_run(env, client, p.batch_lines, p.batch_max_tokens)
        console.print(f"interactive jobs beside a {p.backlog_lines:,}-line batch, fair share…")
        r["backlog"] = backlog.backlog_run(client, p.backlog_lines)
        e.stop()
        console.print(f"a {p.upload_bytes / 1e6:.0f} MB upload…")
        r["upload"] = uploads.upload_memory(env, p.upload_bytes)
        console.print(f"semantic cache lookups among {p.semantic_entries:,} entries…")
        r["semantic"] = semantic.lookup_latency(env, p.semantic_entries, p.semantic_lookups)
        console.print(f"everyday operations, empty and with {p.scale_rows:,} finished jobs…")
        r["scale"] = scale.scale_run(env, p.scale_rows)
    finally:
        client.close()
        api_proc.stop()
        env.teardown()
    figures = measured(r, p)
    write(figures, p, spec)
    return 1 if args.fail_on_missed and report.missed(figures) else 0


def measured(r: dict, p: Params) -> list[Figure]:
    """The run's figures, each with its goal (if it has one) and how it was measured."""
    b, s, bare, cont = r["batched"], r["serial"], r["bare"], r["continuous"]
    efficiency = statistics.median(r["ratios"])
    gain = b["tokens_per_s"] / s["tokens_per_s"]
    overhead_ratio = r["echo"] / r["noop"]
    n = len(p.prompts)
    return [
        Figure("Pipeline efficiency", efficiency, f"{efficiency:.2f}",
               f"{b['tokens_per_s']:.0f} tok/s through API→Redis→worker→Postgres ({n} jobs, batches {b['batch_sizes']}) "
               f"/ {bare['tokens_per_s']:.0f} tok/s bare batched generate ({n} prompts); {p.paired_runs} runs of each taken in turns, the median of the pair ratios {', '.join(f'{x:.2f}' for x in r['ratios'])}; the tok/s are the medians of each side",
               Goal("≥", 0.90)),
        Figure("Batching gain", gain, f"{gain:.1f}x",
               f"{b['tokens_per_s']:.0f} tok/s with {n} concurrent jobs / {s['tokens_per_s']:.0f} tok/s with {p.serial_jobs} jobs one at a time",
               Goal("≥", 6, "x")),
        Figure("Continuous / static batching", cont["tokens_per_s"] / b["tokens_per_s"],
               f"{cont['tokens_per_s'] / b['tokens_per_s']:.2f}",
               f"{cont['tokens_per_s']:.0f} tok/s with the hf-continuous engine / {b['tokens_per_s']:.0f} tok/s "
               f"with hf, same {n} jobs through the pipeline (auto picks hf-continuous on CUDA only)"),
        Figure("Overhead", overhead_ratio, f"{overhead_ratio:.2f}",
               f"{r['echo']:.0f} echo jobs/s end to end / {r['noop']:.0f} no-op Celery tasks/s (threads -c {p.noop_concurrency}); "
               f"{p.echo_jobs} of each, the median of {p.echo_repeats} runs",
               Goal("≥", 0.6)),
        Figure("Submit rate", r["submit"], f"{r['submit']:.0f} jobs/s",
               f"POST /v1/jobs, {p.submit_jobs} jobs from {p.submit_threads} client threads; bulk route {r['bulk']:.0f} jobs/s ({p.bulk_jobs:,} per request)"),
        Figure("Submit → result visible", r["p99"], f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms",
               f"echo engine, {p.steady_jobs_per_s:g} jobs/s for {p.steady_seconds:g} s, long-poll"),
        coldstart.figure(r["cold"]),
        Figure("Memory", r["rss_mb"], f"{r['rss_mb']:.0f} MB",
               f"peak resident memory of the SmolLM2 worker after batches of {p.batch}"),
        submit_path.figure(r["submit_path"]),
        chat_figure(r["chat"], p),
        cache.figure(r["cache"]),
        uploads.figure(r["upload"], p.upload_bytes),
        *batches.figures(r["batch"]),
        *semantic.figures(r["semantic"]),
        *backlog.figures(r["backlog"]),
        *scale.figures(r["scale"]),
    ]  # fmt: skip


def chat_figure(c: dict, p: Params) -> Figure:
    ratio = statistics.median(c["ratios"])
    return Figure(
        "Chat completions / jobs", ratio, f"{ratio:.2f}",
        f"{c['chat_per_s']:.0f} req/s through POST /v1/chat/completions / {c['jobs_per_s']:.0f} through "
        f"POST /v1/jobs + GET ?wait (echo, {p.chat_requests} requests from {p.chat_threads} threads); "
        f"{p.chat_pairs} pairs in turns, the median of the ratios {', '.join(f'{x:.2f}' for x in c['ratios'])}",
        Goal("≥", 0.9),
    )  # fmt: skip


def write(figures: list[Figure], p: Params, spec: ModelSpec) -> None:
    table = Table(title="llmq benchmarks", caption=report.summary(figures))
    for col in report.HEADER:
        table.add_column(col)
    for row in report.rows(figures):
        table.add_row(*row)
    console.print(table)
    lines = [
        "# Benchmarks",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        "- Command: `make bench` (`python -m bench`)",
        f"- Model: `{spec.source.file or spec.source.path}` on {spec.device} (dtype {spec.dtype}), "
        "greedy, "
        f"max_tokens {pipeline.NEW_TOKENS}; worker batch limit {spec.max_batch_size}, "
        f"max_batch_wait_ms {spec.max_batch_wait_ms}, batch_settle_ms {spec.batch_settle_ms}",
        f"- {report.summary(figures)}",
        "",
        *report.markdown_table(figures),
        "",
        "Every ratio is measured side by side in the same run; the figures are this machine's "
        "and move with its load.",
        "",
    ]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    console.print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    sys.exit(main())
