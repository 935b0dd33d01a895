"""Interactive jobs beside a large batch, and fair share between two keys' batches, with the
leader's feeder on a thread (`bench.batches.LeaderThread`) and one echo worker.

- Queue time (a job's `queue_ms`: created → claimed, from Postgres) of interactive jobs
  submitted at a steady rate, first alone, then while a large batch from another key is
  being worked through. Goal: p99 under the batch within 2x of p99 alone.
- Fairness error: two keys with weights 2:1 each submit a batch; once half their lines have
  finished, |finished ratio / 2 - 1|. Goal: ≤ 5 %.

`python -m bench.backlog [LINES]` runs it alone on a private database.
"""

from __future__ import annotations

import statistics
import sys
import time

import httpx
import sqlalchemy as sa

from bench.batches import MODEL, LeaderThread, batch_file
from bench.env import run_alone
from bench.report import Figure, Goal
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job
from llmq.settings import get_settings

GOAL_P99_RATIO = 2.0
GOAL_FAIRNESS_PCT = 5


def _key(weight: float = 1.0) -> str:
    with session_scope() as session:
        return create_key(session, f"bench-w{weight:g}", fair_share_weight=weight)[1]


def _submit_batch(client: httpx.Client, key: str, lines: int) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    files = {"file": ("backlog.jsonl", batch_file(lines, 2))}
    upload = client.post("/v1/files", files=files, data={"purpose": "batch"}, headers=headers)
    body = {"input_file_id": upload.raise_for_status().json()["id"],
            "endpoint": "/v1/chat/completions", "completion_window": "24h"}  # fmt: skip
    return client.post("/v1/batches", json=body, headers=headers).raise_for_status().json()["id"]


def _cancel(client: httpx.Client, key: str, batch_id: str) -> None:
    client.post(f"/v1/batches/{batch_id}/cancel", headers={"Authorization": f"Bearer {key}"})


def _finished(batch_id: str) -> int:
    with session_scope() as session:
        query = sa.select(sa.func.count()).where(
            Job.batch_id == batch_id, Job.status == "succeeded"
        )
        return int(session.scalar(query))


def interactive_queue_ms(client: httpx.Client, jobs_per_s: float, seconds: float) -> list[int]:
    """Submit at a fixed rate; each job's queue time, sorted, once all have run."""
    body = {"model": MODEL, "prompt": "interactive", "max_tokens": 2}
    ids, t0 = [], time.perf_counter()
    for i in range(int(jobs_per_s * seconds)):
        delay = t0 + i / jobs_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids.append(client.post("/v1/jobs", json=body).raise_for_status().json()["id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope() as session:
            rows = session.scalars(sa.select(Job.queue_ms).where(Job.id.in_(ids))).all()
        if all(r is not None for r in rows):
            return sorted(rows)
        time.sleep(0.1)
    raise RuntimeError("interactive jobs did not all start")


def p50_p99(values: list[int]) -> tuple[float, float]:
    return statistics.median(values), values[max(0, int(len(values) * 0.99) - 1)]


def backlog_run(
    client: httpx.Client, lines: int, jobs_per_s: float = 20, seconds: float = 8
) -> dict:
    """Needs an echo worker. The batches are cancelled once measured, not run to the end."""
    leader = LeaderThread(get_settings().sweeper_interval_s)
    try:
        interactive_queue_ms(client, jobs_per_s, 2)  # warm up
        alone = p50_p99(interactive_queue_ms(client, jobs_per_s, seconds))
        heavy = _key()
        batch = _submit_batch(client, heavy, lines)
        while _finished(batch) < 100:
            time.sleep(0.05)
        under = p50_p99(interactive_queue_ms(client, jobs_per_s, seconds))
        done_during = _finished(batch)
        _cancel(client, heavy, batch)

        fair_lines = max(lines // 4, 1000)
        keys = {2.0: _key(2.0), 1.0: _key(1.0)}
        leader.close()  # both backlogs are in place before the feeder sees either
        batches = {w: _submit_batch(client, k, fair_lines) for w, k in keys.items()}
        leader = LeaderThread(get_settings().sweeper_interval_s)
        done = {w: 0 for w in batches}
        while sum(done.values()) < fair_lines:
            time.sleep(0.05)
            done = {w: _finished(b) for w, b in batches.items()}
        for w, b in batches.items():
            _cancel(client, keys[w], b)
    finally:
        leader.close()
    ratio = done[2.0] / max(done[1.0], 1)
    return {"lines": lines, "jobs_per_s": jobs_per_s, "seconds": seconds, "alone": alone,
            "under": under, "done_during": done_during, "fair_lines": fair_lines,
            "fair_done": [done[2.0], done[1.0]], "fairness_error": abs(ratio / 2 - 1)}  # fmt: skip


def figures(r: dict) -> list[Figure]:
    (a50, a99), (u50, u99) = r["alone"], r["under"]
    rate = f"{r['jobs_per_s']:g} jobs/s for {r['seconds']:g} s"
    done = r["fair_done"]  # weight 2, weight 1
    return [
        Figure("Interactive queue time, alone", a99, f"p50 {a50:.0f} ms, p99 {a99:.0f} ms",
               f"created → claimed (Postgres) of interactive echo jobs at {rate}, one echo worker"),
        Figure("Interactive queue time, beside a batch", u99 / max(a99, 1),
               f"p50 {u50:.0f} ms, p99 {u99:.0f} ms ({u99 / max(a99, 1):.1f}x alone)",
               f"the same jobs while another key's {r['lines']:,}-line batch is worked through "
               f"({r['done_during']:,} lines ran meanwhile); value: p99 ÷ p99 alone",
               Goal("≤", GOAL_P99_RATIO, "x", "p99 vs alone")),
        Figure("Fairness error", r["fairness_error"] * 100, f"{r['fairness_error']:.1%}",
               f"two keys with weights 2:1, a {r['fair_lines']:,}-line batch each: lines "
               f"finished once half of them had, {done[0]:,}:{done[1]:,}; |ratio ÷ 2 - 1|",
               Goal("≤", GOAL_FAIRNESS_PCT, " %")),
    ]  # fmt: skip


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    result = run_alone(MODEL, lambda _env, client: backlog_run(client, count))
    for shown in figures(result):
        print(f"{shown.name}: {shown.shown} (goal {shown.goal or '-'}) — {shown.how}")
