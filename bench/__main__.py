"""`make bench`: run the benchmarks side by side, print the table, write BENCHMARKS.md.

The run is made of sections, each measuring one or more figures; `--only a,b` runs some of
them (`--list` names them all). Each section's raw samples go to bench/results/latest.json,
where a partial run replaces only its own sections; BENCHMARKS.md and its plots are then
rendered from that file (and bench/results/gpu.json from `make bench-gpu`), so the rows of
sections that did not run are the ones their own run measured, dated in the header.

The table's "how" column is written from the `Params` each section ran with and the catalog,
and each goal sits beside the figure it judges; `--fail-on-missed` turns a goal this run
missed into exit status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from functools import cache as once
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench import (
    backlog,
    batch_memory,
    batches,
    cache,
    charts,
    coldstart,
    openai_path,
    overhead,
    pipeline,
    report,
    results,
    scale,
    semantic,
    submit_path,
    uploads,
)
from bench.env import ROOT, BenchEnv, Proc, api, api_workers, catalog_spec, wait_for_worker, worker
from bench.report import Figure, Goal, paired_ratio, quartiles, ratio_figure
from cli.devstack import free_port
from llmq.heap import freeze_startup_heap

console = Console()


@dataclass(frozen=True)
class Params:
    """What a run does; the table describes the run from these, never from separate text."""

    batch: int = 32  # the worker's batch limit, and the jobs submitted at once
    pairs: int = report.MIN_PAIRS  # runs of each side of every ratio, taken in turns
    serial_jobs: int = 3  # jobs run one after another for the batching gain
    continuous_jobs: int = 8  # concurrent jobs of each continuous / static pair
    throughput_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # bare generate batch sizes
    cold_runs: int = 3  # starts from zero of each kind (warm template, plain process)
    echo_jobs: int = 2000  # per echo and no-op run
    noop_concurrency: int = 64  # threads of the no-op Celery worker
    steady_jobs_per_s: float = 40
    steady_seconds: float = 10
    latency_runs: int = 5  # runs of the steady load; a figure is the median of their percentiles
    submit_jobs: int = 1000
    submit_threads: int = 8
    submit_pairs: int = 5  # POST /v1/jobs and the bare endpoint, in turns
    bulk_jobs: int = 5000  # in one bulk request
    chat_requests: int = 200  # per side of each chat/jobs pair
    chat_threads: int = 16
    cache_hits: int = 500  # submits of one job the exact cache answers
    upload_bytes: int = 200_000_000  # one file to POST /v1/files
    batch_lines: int = 10_000  # one OpenAI batch through the echo engine
    batch_max_tokens: int = 4
    semantic_entries: int = 100_000  # random unit vectors in one semantic cache namespace
    semantic_lookups: int = 1000  # near-duplicate lookups, each beside a random one
    backlog_lines: int = 50_000  # another key's batch beside interactive jobs
    scale_rows: int = 1_000_000  # finished jobs and ledger rows for the flat-costs figure
    batch_memory_lines: int = 1_000_000  # one batch admitted, worked and cancelled
    batch_memory_work_s: float = 60  # how long an echo worker works through it

    @property
    def prompts(self) -> list[str]:
        return pipeline.prompts(max(self.batch, *self.throughput_batches))[: self.batch]

    @classmethod
    def stored(cls, values: dict[str, Any]) -> Params:
        """The parameters a stored section ran with (fields added since take their default)."""
        known = {f.name for f in fields(cls)}
        kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**kept)


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


HF, CONTINUOUS, ECHO = "smollm2-135m", "smollm2-continuous", "echo"


class Workers:
    """Worker processes the sections need: each started when a section first needs it, and
    stopped once no section left to run needs it."""

    def __init__(self, env: BenchEnv):
        self.env, self.procs = env, dict[str, Proc]()

    def need(self, models: Iterable[str]) -> None:
        models = list(models)
        for model in models:
            if model not in self.procs:
                self.procs[model] = worker(self.env, model)
        for model in models:
            wait_for_worker(self.env, model)

    def keep(self, models: set[str]) -> None:
        for model in [m for m in self.procs if m not in models]:
            self.procs.pop(model).stop()

    def peak_rss_mb(self, model: str) -> float:
        return self.procs[model].peak_rss_mb()


@dataclass
class Ctx:
    """What a section runs with."""

    env: BenchEnv
    client: httpx.Client  # the exact cache kept out (no-store): jobs that run
    auth: dict[str, str]
    p: Params
    workers: Workers


@once
def bare_model(count: int) -> pipeline.BareGenerate:
    """SmolLM2 in this process with the first `count` prompts, loaded once for every section."""
    return pipeline.BareGenerate(pipeline.prompts(count))


def tokens_per_s(runs: list[dict]) -> list[float]:
    return [r["tokens_per_s"] for r in runs]


def run_cold(c: Ctx) -> dict:
    return coldstart.from_zero(c.env, c.client, c.p.cold_runs)


def run_submit_path(c: Ctx) -> dict:
    p = c.p
    return submit_path.submit_vs_bare(
        c.env, c.client, p.submit_jobs, p.submit_threads, p.submit_pairs, api_workers()
    )


def run_scale(c: Ctx) -> dict:
    return scale.scale_run(c.env, c.p.scale_rows)


def run_batch_memory(c: Ctx) -> dict:
    return batch_memory.run(c.env, free_port(), c.p.batch_memory_lines, c.p.batch_memory_work_s)


def run_pipeline(c: Ctx) -> dict:
    """Pipeline at the batch limit, bare generate, and a few jobs one at a time, in turns."""
    p, prompts = c.p, c.p.prompts
    bare = bare_model(len(prompts))
    pipeline.run_jobs(c.client, HF, prompts, concurrent=True)  # warm up
    bare.run(len(prompts))  # both sides have run the full batch once
    runs, bare_runs, serial = [], [], []
    for _ in range(p.pairs):
        runs.append(pipeline.run_jobs(c.client, HF, prompts, True))
        bare_runs.append(bare.run(len(prompts)))
        serial.append(pipeline.run_jobs(c.client, HF, prompts[: p.serial_jobs], False))
    return {
        "pipeline": runs,
        "bare": bare_runs,
        "serial": serial,
        "rss_mb": c.workers.peak_rss_mb(HF),
    }


def run_continuous(c: Ctx) -> dict:
    prompts = c.p.prompts[: c.p.continuous_jobs]
    for model in (CONTINUOUS, HF):  # warm up
        pipeline.run_jobs(c.client, model, prompts, True)
    continuous, static = [], []
    for _ in range(c.p.pairs):
        continuous.append(pipeline.run_jobs(c.client, CONTINUOUS, prompts, True))
        static.append(pipeline.run_jobs(c.client, HF, prompts, True))
    return {"continuous": continuous, "static": static}


def run_throughput(c: Ctx) -> dict:
    bare = bare_model(max(c.p.throughput_batches))
    bare.run(1)  # warm up
    return {"batches": [{"batch": n, **bare.run(n)} for n in c.p.throughput_batches]}


def run_overhead(c: Ctx) -> dict:
    """Echo jobs end to end and no-op Celery tasks, in turns, both workers up throughout."""
    overhead.echo_jobs_per_s(c.client, 200)  # warm up
    noop = overhead.NoopWorker(c.env, c.p.noop_concurrency)
    echo, tasks = [], []
    try:
        for _ in range(c.p.pairs):
            echo.append(overhead.echo_jobs_per_s(c.client, c.p.echo_jobs))
            tasks.append(noop.tasks_per_s(c.p.echo_jobs))
    finally:
        noop.stop()
    return {"echo_per_s": echo, "noop_per_s": tasks}


def run_latency(c: Ctx) -> dict:
    overhead.steady_latency_ms(c.client, c.p.steady_jobs_per_s, 1)  # warm: pools, statements
    runs = [
        overhead.steady_latency_ms(c.client, c.p.steady_jobs_per_s, c.p.steady_seconds)
        for _ in range(c.p.latency_runs)
    ]
    return {"runs_ms": runs, "samples_ms": sorted(x for run in runs for x in run)}


def run_submit(c: Ctx) -> dict:
    single, bulk = overhead.submit_rates(
        c.client, c.p.submit_jobs, c.p.submit_threads, c.p.bulk_jobs
    )
    return {"single_per_s": single, "bulk_per_s": bulk}


def run_chat(c: Ctx) -> dict:
    return openai_path.chat_vs_jobs(c.client, c.p.chat_requests, c.p.chat_threads, c.p.pairs)


def run_cache(c: Ctx) -> dict:
    with httpx.Client(base_url=c.client.base_url, headers=c.auth, timeout=300) as cached:
        return cache.hit_latency_ms(cached, c.p.cache_hits)


def run_batch(c: Ctx) -> dict:
    return batches.batch_run(c.env, c.client, c.p.batch_lines, c.p.batch_max_tokens)


def run_backlog(c: Ctx) -> dict:
    return backlog.backlog_run(c.client, c.p.backlog_lines)


def run_upload(c: Ctx) -> dict:
    return uploads.upload_memory(c.env, c.p.upload_bytes)


def run_semantic(c: Ctx) -> dict:
    return semantic.lookup_latency(c.env, c.p.semantic_entries, c.p.semantic_lookups)


def pipeline_figures(r: dict, p: Params) -> list[Figure]:
    runs, bare, serial = (
        tokens_per_s(r["pipeline"]),
        tokens_per_s(r["bare"]),
        tokens_per_s(r["serial"]),
    )
    sizes = sorted({size for run in r["pipeline"] for size in run["batch_sizes"]})
    n, med = p.batch, statistics.median
    return [
        ratio_figure("Pipeline efficiency", paired_ratio(runs, bare),
                     f"{med(runs):.0f} tok/s through API→Redis→worker→Postgres ({n} jobs, batches {sizes}) "
                     f"/ {med(bare):.0f} tok/s bare batched generate ({n} prompts), medians",
                     Goal("≥", 0.90)),
        ratio_figure("Batching gain", paired_ratio(runs, serial),
                     f"{med(runs):.0f} tok/s with {n} concurrent jobs / {med(serial):.0f} tok/s with "
                     f"{p.serial_jobs} jobs one at a time, medians",
                     Goal("≥", 6, "x"), shown="{:.1f}x"),
        Figure("Memory", r["rss_mb"], f"{r['rss_mb']:.0f} MB",
               f"peak resident memory of the SmolLM2 worker after batches of {n}"),
    ]  # fmt: skip


def continuous_figures(r: dict, p: Params) -> list[Figure]:
    cont, static = tokens_per_s(r["continuous"]), tokens_per_s(r["static"])
    med = statistics.median
    return [
        ratio_figure("Continuous / static batching", paired_ratio(cont, static),
                     f"{med(cont):.0f} tok/s with the hf-continuous engine / {med(static):.0f} tok/s with hf, "
                     f"the same {p.continuous_jobs} concurrent jobs through the pipeline (auto picks "
                     "hf-continuous on CUDA only)"),
    ]  # fmt: skip


def throughput_figures(r: dict, p: Params) -> list[Figure]:
    points = r["batches"]
    first, last = points[0], points[-1]
    return [
        Figure("Bare generate by batch size", last["tokens_per_s"],
               f"{first['tokens_per_s']:.0f} → {last['tokens_per_s']:.0f} tok/s (batch {first['batch']} → {last['batch']})",
               "SmolLM2 through one batched generate call in the bench process, "
               f"{pipeline.NEW_TOKENS} new tokens: "
               + ", ".join(f"{x['batch']}: {x['tokens_per_s']:.0f}" for x in points)
               + f" tok/s ([plot](bench/plots/{charts.THROUGHPUT_PNG}))"),
    ]  # fmt: skip


def overhead_figures(r: dict, p: Params) -> list[Figure]:
    echo, noop = r["echo_per_s"], r["noop_per_s"]
    med = statistics.median
    return [
        ratio_figure("Overhead", paired_ratio(echo, noop),
                     f"{med(echo):.0f} echo jobs/s end to end / {med(noop):.0f} no-op Celery tasks/s "
                     f"(threads -c {p.noop_concurrency}), {p.echo_jobs} of each per run, medians",
                     Goal("≥", 0.6)),
    ]  # fmt: skip


def latency_figures(r: dict, p: Params) -> list[Figure]:
    runs = r.get("runs_ms") or [r["samples_ms"]]
    per_run = [overhead.p50_p99(sorted(run)) for run in runs]
    how = (
        f"echo engine, {p.steady_jobs_per_s:g} jobs/s for {p.steady_seconds:g} s, POST then a "
        f"long-poll GET; {len(runs)} runs of {len(runs[0])} jobs, the median of the runs' "
        f"percentiles ([distribution](bench/plots/{charts.LATENCY_PNG}))"
    )
    figures = []
    for i, (name, target) in enumerate((("p50", 15), ("p99", 60))):
        values = [pair[i] for pair in per_run]
        value = statistics.median(values)
        spread = quartiles(values) if len(values) > 1 else None  # as a ratio's pairs
        described = f"{how}; runs {', '.join(f'{v:.1f}' for v in values)} ms"
        figure = Figure(f"Submit → result visible, {name}", value, f"{value:.1f} ms", described,
                        Goal("≤", target, " ms"), spread)  # fmt: skip
        figures.append(figure)
    return figures


def submit_figures(r: dict, p: Params) -> list[Figure]:
    return [
        Figure("Submit rate", r["single_per_s"], f"{r['single_per_s']:.0f} jobs/s",
               f"POST /v1/jobs, {p.submit_jobs} jobs from {p.submit_threads} client threads"),
        Figure("Bulk submit rate", r["bulk_per_s"], f"{r['bulk_per_s']:,.0f} jobs/s",
               f"POST /v1/jobs/bulk, {p.bulk_jobs:,} jobs per request", Goal("≥", 10_000, " jobs/s")),
    ]  # fmt: skip


def chat_figures(r: dict, p: Params) -> list[Figure]:
    chat, jobs = r["chat_per_s"], r["jobs_per_s"]
    med = statistics.median
    return [
        ratio_figure("Chat completions / jobs", paired_ratio(chat, jobs),
                     f"{med(chat):.0f} req/s through POST /v1/chat/completions / {med(jobs):.0f} through "
                     f"POST /v1/jobs + GET ?wait (echo, {p.chat_requests} requests from {p.chat_threads} "
                     "threads per run), medians",
                     Goal("≥", 0.9)),
    ]  # fmt: skip


@dataclass(frozen=True)
class Section:
    """One part of the run: the workers it needs up, what it measures, the rows it makes."""

    name: str
    about: str
    models: tuple[str, ...]
    run: Callable[[Ctx], dict]
    figures: Callable[[dict, Params], list[Figure]]


SECTIONS = [
    Section("cold", "submit → first token with the pool at zero, in parts", (), run_cold,
            lambda r, p: [coldstart.figure(r)]),
    Section("pipeline", "pipeline efficiency, batching gain, worker memory", (HF,), run_pipeline,
            pipeline_figures),
    Section("continuous", "hf-continuous / hf through the pipeline", (HF, CONTINUOUS),
            run_continuous, continuous_figures),
    Section("throughput", "bare generate tokens/s at each batch size (plot)", (), run_throughput,
            throughput_figures),
    Section("overhead", "echo jobs / no-op Celery tasks", (ECHO,), run_overhead, overhead_figures),
    Section("latency", "submit → result at a steady rate (plot)", (ECHO,), run_latency,
            latency_figures),
    Section("submit", "submit rates, single and bulk", (), run_submit, submit_figures),
    Section("submit_path", "POST /v1/jobs beside a bare INSERT + publish endpoint", (),
            run_submit_path, lambda r, p: [submit_path.figure(r)]),
    Section("chat", "chat completions / jobs + wait", (ECHO,), run_chat, chat_figures),
    Section("cache", "exact cache hit latency", (ECHO,), run_cache, lambda r, p: [cache.figure(r)]),
    Section("batch", "an OpenAI batch: enqueue, finish, finalize", (ECHO,), run_batch,
            lambda r, p: batches.figures(r)),
    Section("backlog", "interactive queue time beside a batch, fair share", (ECHO,), run_backlog,
            lambda r, p: backlog.figures(r)),
    Section("upload", "API memory during a large upload", (), run_upload,
            lambda r, p: [uploads.figure(r, p.upload_bytes)]),
    Section("semantic", "semantic cache lookups, prompt embedding", (), run_semantic,
            lambda r, p: semantic.figures(r)),
    Section("scale", "everyday operations, empty and with a million finished jobs", (),
            run_scale, lambda r, p: scale.figures(r)),
    Section("batch_memory", "API, worker and Redis memory around a million-line batch", (),
            run_batch_memory, lambda r, p: batch_memory.figures(r)),
]  # fmt: skip
BY_NAME = {s.name: s for s in SECTIONS}


def parse_only(text: str | None) -> list[Section]:
    """The sections a comma list names (every one when there is none), in the run's order."""
    if not text:
        return list(SECTIONS)
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - BY_NAME.keys())
    if unknown or not names:
        raise ValueError(
            f"unknown section {', '.join(unknown) or repr(text)}; one of: {', '.join(BY_NAME)}"
        )
    return [s for s in SECTIONS if s.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--fail-on-missed", action="store_true", help="exit 1 when a figure misses its goal"
    )
    parser.add_argument("--only", metavar="A,B", help="run only these sections (see --list)")
    parser.add_argument("--list", action="store_true", help="print the section names and exit")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only redraw BENCHMARKS.md and the plots from the JSON",
    )
    args = parser.parse_args(argv)
    if args.list:
        for s in SECTIONS:
            print(f"{s.name:<12} {s.about}")
        return 0
    if args.render:
        write(results.load(results.LATEST), results.load(results.GPU))
        return 0
    try:
        chosen = parse_only(args.only)
    except ValueError as e:
        parser.error(str(e))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    p = Params()
    new = run(chosen, p)
    store = results.merge(results.load(results.LATEST), new)
    results.save(results.LATEST, store)
    console.print(f"wrote {results.LATEST}")
    write(results.load(results.LATEST), results.load(results.GPU))  # as --render draws it
    ran = [f for s in chosen for f in s.figures(new["sections"][s.name]["result"], p)]
    return 1 if args.fail_on_missed and report.missed(ran) else 0


def run(chosen: list[Section], p: Params) -> dict[str, Any]:
    """Run the sections in order on a private stack; their entries for the results file."""
    date = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    where = machine()
    env = BenchEnv(batch=p.batch)
    env.setup()
    port = free_port()
    api_proc = api(env, port)
    auth = {"Authorization": f"Bearer {env.key()}"}
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers=auth | {"Cache-Control": "no-store"},
        timeout=300,
    )
    ctx = Ctx(env, client, auth, p, Workers(env))
    sections: dict[str, Any] = {}
    try:
        for i, section in enumerate(chosen):
            ctx.workers.keep({m for later in chosen[i:] for m in later.models})
            ctx.workers.need(section.models)
            console.print(f"{section.name}: {section.about}…")
            freeze_startup_heap()  # the bench's own full GC passes stay out of its timings
            result = section.run(ctx)
            sections[section.name] = results.entry(date, where, asdict(p), result)
    finally:
        ctx.workers.keep(set())
        client.close()
        api_proc.stop()
        env.teardown()
    return {"sections": sections}


def measured(store: dict[str, Any]) -> list[Figure]:
    """Every stored section's rows, in the run's order, each described by its own parameters."""
    entries = store.get("sections", {})
    return [
        figure
        for s in SECTIONS
        if s.name in entries
        for figure in s.figures(entries[s.name]["result"], Params.stored(entries[s.name]["params"]))
    ]


def header(store: dict[str, Any]) -> list[str]:
    """Date and machine of the newest run, and of every section kept from an earlier one."""
    entries = store["sections"]
    newest = max(e["date"] for e in entries.values())
    where = next(e["machine"] for e in entries.values() if e["date"] == newest)
    lines = [f"- Date: {newest}", f"- Machine: {where}"]
    older = [(n, e) for n, e in entries.items() if e["date"] != newest]
    if older:
        lines.append("- Kept from earlier runs (a `--only` run measured the rest): " + "; ".join(
            f"{n} ({e['date']}" + (f", {e['machine']}" if e["machine"] != where else "") + ")"
            for n, e in older
        ))  # fmt: skip
    return lines


def write_plots(store: dict[str, Any], directory: Path = charts.PLOTS) -> list[Path]:
    """The plots the stored sections have samples for."""
    entries, written = store.get("sections", {}), []
    if "latency" in entries:
        e = entries["latency"]
        p = Params.stored(e["params"])
        title = f"echo jobs at {p.steady_jobs_per_s:g}/s for {p.steady_seconds:g} s ({e['date']})"
        samples = e["result"]["samples_ms"]
        p50, p99 = overhead.p50_p99(samples)
        marks = {"p50": p50, "p99": p99}
        written.append(charts.latency_cdf(samples, directory / charts.LATENCY_PNG, title, marks))
    if "throughput" in entries:
        e = entries["throughput"]
        points = [(x["batch"], x["tokens_per_s"]) for x in e["result"]["batches"]]
        title = f"SmolLM2 bare generate, {pipeline.NEW_TOKENS} new tokens ({e['date']})"
        written.append(
            charts.throughput_by_batch({"cpu": points}, directory / charts.THROUGHPUT_PNG, title)
        )
    return written


def write(store: dict[str, Any], gpu: dict[str, Any]) -> list[Figure]:
    """Print the table and write BENCHMARKS.md and its plots from the stored results."""
    from bench import gpu as gpu_bench

    spec = catalog_spec(HF, Params().batch)
    figures = measured(store)
    table = Table(title="llmq benchmarks", caption=report.summary(figures))
    for col in report.HEADER:
        table.add_column(col)
    for row in report.rows(figures):
        table.add_row(*row)
    console.print(table)
    for path in write_plots(store):
        console.print(f"wrote {path}")
    lines = [
        "# Benchmarks",
        "",
        *header(store),
        "- Command: `make bench` (`python -m bench`); `make bench ONLY=a,b` re-runs some sections "
        "(`python -m bench --list`)",
        f"- Model: `{spec.source.file or spec.source.path}` on {spec.device} (dtype {spec.dtype}), "
        "greedy, "
        f"max_tokens {pipeline.NEW_TOKENS}; worker batch limit {spec.max_batch_size}, "
        f"max_batch_wait_ms {spec.max_batch_wait_ms}, batch_settle_ms {spec.batch_settle_ms}",
        f"- {report.summary(figures)}",
        "",
        *report.markdown_table(figures),
        "",
        "Every ratio is the median of pairs of runs taken in turns (A, B, A, B, …), so both "
        "sides of a pair saw the same machine; its spread (range and IQR of the pair ratios) is "
        "in the how column, and a goal inside the IQR is judged inconclusive. The figures are "
        "this machine's and move with its load. Raw samples: "
        "[bench/results/latest.json](bench/results/latest.json).",
        "",
        f"![submit → result latency](bench/plots/{charts.LATENCY_PNG}) "
        f"![tokens/s by batch size](bench/plots/{charts.THROUGHPUT_PNG})",
        "",
        *gpu_bench.markdown(gpu),
    ]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    console.print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return figures


if __name__ == "__main__":
    sys.exit(main())
