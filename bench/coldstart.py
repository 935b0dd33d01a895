"""Cold start: submit → first token with the model's pool at zero, in parts.

The job is submitted, then the local backend is asked for one worker at once (the scheduler
would ask within `LLMQ_SCHEDULER_INTERVAL_S`; that wait is not counted), and the job asks for
one token, so its result is its first token. The worker's heartbeat says how its start went
(spawn, imports, weights); the first batch is what is left. Runs alternate between starting
workers from the warm template and starting them as plain processes, with the GGUF cache
prepared beforehand (`llmq models prepare`, timed once).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import httpx
import redis

from bench.env import ROOT, BenchEnv
from bench.report import Figure, Goal
from scheduler.backends.local import LocalBackend

MODEL = "smollm2-cold"
PARTS = ("spawn", "imports", "weights", "first batch")
MODES = ("template", "plain")


def prepare_s(env: BenchEnv) -> float:
    """`llmq models prepare` into the run's empty cache: the dequantizing no job waits on."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli", "models", "prepare", MODEL],
        env=env.env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def from_zero(env: BenchEnv, client: httpx.Client, runs: int) -> dict:
    """`runs` starts from zero of each mode, in turns: {mode: [{total, parts…}]}, and the
    prepare time."""
    from llmq.catalog import get_catalog
    from llmq.queues import make_celery
    from llmq.settings import get_settings

    os.environ["LLMQ_CACHE_DIR"] = env.env["LLMQ_CACHE_DIR"] = str(env.dir / "cache")
    out: dict = {"prepare_s": prepare_s(env), **{mode: [] for mode in MODES}}
    settings = get_settings()
    rds = redis.Redis.from_url(env.redis_url)
    backends = {
        mode: LocalBackend(
            settings.model_copy(update={"warm_template": mode == "template"}),
            get_catalog(),
            [MODEL],
            rds,
            make_celery(settings),
            log_dir=env.dir / f"coldstart-{mode}",
        )
        for mode in MODES
    }
    try:
        template = backends["template"].template
        assert template is not None
        deadline = time.monotonic() + 300
        while not template.ready():  # it warms while the pool is idle
            if time.monotonic() > deadline:
                raise RuntimeError("the warm template did not get ready")
            time.sleep(0.2)
        for _ in range(runs):
            for mode in MODES:
                out[mode].append(_one_start(env, client, backends[mode], rds))
    finally:
        for backend in backends.values():
            backend.close()
    return out


def _one_start(
    env: BenchEnv, client: httpx.Client, backend: LocalBackend, rds: redis.Redis
) -> dict:
    from llmq import events

    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    job = client.post("/v1/jobs", json=body).json()
    started = time.perf_counter()
    backend.scale(MODEL, 1)
    while job["status"] in ("queued", "running"):
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
    total = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"the cold job ended {job['status']}")
    node = backend.workers[0].node
    record = next(r for r in events.live_worker_records(rds, env.prefix) if r.get("node") == node)
    parts = dict(record["startup_s"])
    parts["first batch"] = max(0.0, total - sum(parts.values()))
    backend.scale(MODEL, 0)
    while backend.workers:
        backend.tick()
        time.sleep(0.1)
    return {"total": total, **parts}


def figure(r: dict) -> Figure:
    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in r[mode])

    def parts(mode: str) -> str:
        return ", ".join(f"{p} {median(mode, p):.2f}" for p in PARTS)

    warm, plain = median("template", "total"), median("plain", "total")
    runs = ", ".join(f"{run['total']:.2f}" for run in r["template"])
    return Figure(
        "Cold start",
        warm,
        f"{warm:.2f} s from zero ({plain:.1f} s without the template)",
        f"submit → first token (max_tokens 1), SmolLM2 pool at zero, cache prepared; worker "
        f"forked from the warm template: {parts('template')} s (median of {runs}); started as a "
        f"plain process: {parts('plain')} s; the scheduler's reaction (LLMQ_SCHEDULER_INTERVAL_S) "
        f"not counted; `llmq models prepare` dequantized the GGUF once in {r['prepare_s']:.1f} s",
        Goal("≤", 1.5, " s"),
    )
