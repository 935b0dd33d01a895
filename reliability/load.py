"""Load: a constant job rate on the echo engine for minutes, from locust (headless, loopback).

Each locust user submits a job (with a webhook to a local receiver) and long-polls it until it
is final. Measured: the rate sustained, submit→final latency, errors by kind, whether every job
and webhook was final and every queue empty at the end, and each process's resident memory,
sampled every few seconds, from minute 1 (or a quarter of a short run) to the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa

from bench.env import BenchEnv, Proc, api, wait_for_worker, webhook_sender, worker
from cli.devstack import free_port
from reliability.procs import RssSampler
from reliability.receiver import CountingReceiver
from reliability.report import Figure, SuiteResult

# 15 jobs/s is what the 2-core reference machine sustains with room to spare while other work
# runs (20 jobs/s brought the median round trip to 1.5 s there); raise it on a bigger machine.
FULL = {"jobs_per_s": 15.0, "seconds": 300, "sample_s": 5.0}
QUICK = {"jobs_per_s": 5.0, "seconds": 30, "sample_s": 2.0}
TENANTS = 4
JOBS_PER_USER_S = 0.25  # each user starts a job every 4 s; a round trip stays well under that
DRAIN_TIMEOUT_S = 120
MEMORY_GROWTH_GOAL = 0.10


def run_locust(
    url: str, keys: list[str], webhook_url: str, rate: float, seconds: int, out: Path
) -> dict:
    """Run locust headless with a fixed user count for `seconds`; returns the locustfile's
    result: jobs, p50_ms, p99_ms, max_ms and errors ({'method name: error': count})."""
    users = max(1, round(rate / JOBS_PER_USER_S))
    result = out / "locust-result.json"
    argv = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")),
        "--headless", "--host", url, "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
        "--stop-timeout", "60", "--only-summary", "--loglevel", "WARNING",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    env = {
        "LLMQ_LOAD_API_KEYS": ",".join(keys),
        "LLMQ_LOAD_JOBS_PER_USER_S": str(JOBS_PER_USER_S),
        "LLMQ_LOAD_WEBHOOK_URL": webhook_url,
        "LLMQ_LOAD_RESULT_PATH": str(result),
    }
    with (out / "locust.log").open("wb") as log:
        subprocess.run(
            argv, env={**_base_env(), **env}, stdout=log, stderr=subprocess.STDOUT,
            timeout=seconds + 180, check=True,
        )  # fmt: skip
    return json.loads(result.read_text())


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}


def backlog(
    redis_url: str, prefix: str, model: str = "echo", key_ids: list[uuid.UUID] | None = None
) -> dict[str, int]:
    """What is not done yet: the model's jobs not final (only these keys' when given, for a
    database other runs share), webhooks not sent, messages waiting."""
    from llmq.db import session_scope
    from llmq.models import ACTIVE_STATUSES, Job, WebhookDelivery
    from llmq.queues import PRIORITY_SEP, PRIORITY_STEPS, WEBHOOK_QUEUE, waiting_count

    client = redis.Redis.from_url(redis_url)
    hooks = [prefix + WEBHOOK_QUEUE] + [
        f"{prefix}{WEBHOOK_QUEUE}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS[1:]
    ]
    with session_scope() as session:
        active = sa.select(sa.func.count()).where(
            Job.model == model, Job.status.in_(ACTIVE_STATUSES)
        )
        if key_ids is not None:
            active = active.where(Job.api_key_id.in_(key_ids))
        jobs = session.scalar(active)
        deliveries = session.scalar(
            sa.select(sa.func.count()).where(WebhookDelivery.status.in_(("pending", "sending")))
        )
    return {
        "jobs_not_final": int(jobs),
        "webhooks_not_final": int(deliveries),
        f"{model}_queue": waiting_count(client, model, prefix),
        "webhook_queue": sum(client.llen(k) for k in hooks),
    }


def job_counts(env: BenchEnv, since_id: str) -> tuple[dict[str, int], float]:
    """Jobs of the run by status (all but the warm-up job `since_id`), and the seconds from
    the first submit to the last finish."""
    from llmq.db import session_scope
    from llmq.models import Job

    load = Job.id != since_id
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count()).where(load).group_by(Job.status)
        ).all()
        window = session.scalar(
            sa.select(
                sa.func.extract("epoch", sa.func.max(Job.finished_at) - sa.func.min(Job.created_at))
            ).where(load)
        )
    return {status: int(count) for status, count in rows}, float(window or 0)


def wait_drained(env: BenchEnv, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    left = backlog(env.redis_url, env.prefix)
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(1)
        left = backlog(env.redis_url, env.prefix)
    return left


def run(quick: bool = False) -> SuiteResult:
    plan = QUICK if quick else FULL
    env = BenchEnv()
    env.env["LLMQ_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the receiver is on loopback
    env.setup()
    procs: dict[str, Proc] = {}
    receiver = CountingReceiver()
    try:
        port = free_port()
        procs["api"] = api(env, port)
        procs["worker"] = worker(env, "echo")
        procs["webhook sender"] = webhook_sender(env)
        wait_for_worker(env, "echo")
        # Several tenants, as in a real deployment: each holds a share of the users' open
        # long-polls, under the per-key cap on open waits.
        keys = [env.key() for _ in range(TENANTS)]
        url = f"http://127.0.0.1:{port}"
        warm = {"model": "echo", "prompt": "warm up", "max_tokens": 2}
        job = httpx.post(
            f"{url}/v1/jobs", json=warm, headers={"Authorization": f"Bearer {keys[0]}"}
        )
        job.raise_for_status()
        sampler = RssSampler({n: p.proc.pid for n, p in procs.items()}, plan["sample_s"])
        stats = run_locust(url, keys, receiver.url, plan["jobs_per_s"], plan["seconds"], env.dir)
        left = wait_drained(env, DRAIN_TIMEOUT_S)
        sampler.stop()
        counts, ran_s = job_counts(env, job.json()["id"])
    finally:
        for proc in procs.values():
            proc.stop()
        receiver.close()
        env.teardown()
    return result(plan, ran_s, stats, counts, left, sampler, receiver.count)


def result(plan, ran_s, stats, counts, left, sampler, webhooks) -> SuiteResult:
    succeeded = counts.get("succeeded", 0)
    rate = succeeded / ran_s if ran_s else 0.0
    # A job's end is counted from Postgres below; from locust, failed requests and timeouts.
    ended = tuple(f"job {s}" for s in ("failed", "cancelled", "expired"))
    errors = {k: v for k, v in stats["errors"].items() if not any(e in k for e in ended)}
    for status, count in counts.items():
        if status != "succeeded":
            errors[f"job {status}"] = count
    error_count = sum(errors.values())
    baseline_s = min(60.0, plan["seconds"] / 4)
    growth = sampler.growth(baseline_s)
    figures = [
        Figure(
            "load: sustained rate",
            f"{rate:.1f} jobs/s (target {plan['jobs_per_s']:g})",
            "≥ 95% of the target",
            rate >= 0.95 * plan["jobs_per_s"],
        ),
        Figure(
            "load: submit → final",
            f"p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms",
        ),
        Figure(
            "load: errors",
            str(error_count)
            + (f" ({'; '.join(f'{k} x{v}' for k, v in errors.items())})" if errors else ""),
            "0",
            error_count == 0,
        ),
        Figure(
            "load: drained",
            "yes" if not any(left.values()) else f"no: {left}",
            "yes",
            not any(left.values()),
        ),
    ]
    for name, value in growth.items():
        figures.append(
            Figure(
                f"load: memory growth, {name}",
                f"{value:+.1%} ({sampler.first_after_mb(baseline_s)[name]:.0f} → "
                f"{sampler.last_mb()[name]:.0f} MB)",
                f"< {MEMORY_GROWTH_GOAL:.0%}",
                value < MEMORY_GROWTH_GOAL,
            )
        )
    how = (
        f"locust, headless, {max(1, round(plan['jobs_per_s'] / JOBS_PER_USER_S))} users each "
        f"starting a job every {1 / JOBS_PER_USER_S:g} s (constant throughput) for "
        f"{plan['seconds']} s against 127.0.0.1, spread over {TENANTS} tenant keys: submit an echo job (max_tokens 4, a webhook "
        f"to a local receiver), long-poll `GET /v1/jobs/{{id}}?wait=30` until final. One API "
        f"(uvicorn), one echo worker, one webhook sender. {succeeded} jobs succeeded "
        f"between the first submit and the last finish ({ran_s:.0f} s), "
        f"{webhooks} webhooks received. Resident memory (VmRSS) of each process sampled every "
        f"{plan['sample_s']:g} s; growth from {baseline_s:g} s to the end."
    )
    raw = {
        "plan": plan,
        "ran_s": ran_s,
        "job_counts": counts,
        "errors": errors,
        "left": left,
        "locust": stats,
        "rss_kb": sampler.samples,
        "webhooks_received": webhooks,
    }
    return SuiteResult("load", how, figures, raw)
