"""The semantic cache's lookup at 100,000 entries, and the embedding of one prompt.

Random unit vectors stand in for 100,000 embedded prompts (the index does not care where a
vector came from); they are added through the store's own path into Redis, a second instance
catches up on them as a new API replica would, and each timed lookup is a near-duplicate of
a stored entry (a hit) or a random vector (a miss): the Redis read of what is new plus the
search. The embedding is timed apart, one prompt at a time, with the model already loaded.

`python -m bench.semantic [ENTRIES]` runs it alone on a private Redis prefix.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import redis
from threadpoolctl import threadpool_limits

from bench.env import BenchEnv
from bench.report import Figure, Goal
from llmq import embeddings
from llmq.semantic_cache import DIMENSIONS, EXACT_SCAN_MAX, SemanticCache, unit

GOAL_P99_MS = 5
THRESHOLD = 0.9
PROMPTS = [
    "What is the capital of France?",
    "Summarize the plot of Hamlet in two sentences.",
    "Write a haiku about autumn rain.",
    "How do I reverse a list in Python?",
    "Explain the difference between TCP and UDP.",
]


def percentile_ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lookup_latency(env: BenchEnv, entries: int, lookups: int) -> dict[str, float]:
    """Timed with one BLAS thread, as an API replica runs (see docs/operations.md): threads
    that serve requests at once, not one request spread over every core."""
    with threadpool_limits(1, user_api="blas"):
        return _measure(env, entries, lookups)


def _measure(env: BenchEnv, entries: int, lookups: int) -> dict[str, float]:
    client = redis.Redis.from_url(env.redis_url)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((entries, DIMENSIONS), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer = SemanticCache(client, env.prefix, ttl_s=3600, max_entries=entries)
    started = time.perf_counter()
    for i in range(0, entries, 5000):
        part = vectors[i : i + 5000]
        writer.add_many("bench", "m@1", part, [f"job-{j}" for j in range(i, i + len(part))])
    add_s = time.perf_counter() - started
    replica = SemanticCache(client, env.prefix, ttl_s=3600, max_entries=entries)
    started = time.perf_counter()
    replica.lookup("bench", "m@1", vectors[0], THRESHOLD)
    catch_up_s = time.perf_counter() - started
    hit_s, miss_s, hits = [], [], 0
    for _ in range(lookups):
        target = int(rng.integers(entries))
        for near, times in ((True, hit_s), (False, miss_s)):
            noise = rng.standard_normal(DIMENSIONS, dtype=np.float32)
            query = unit(vectors[target] + 0.01 * noise) if near else unit(noise)
            started = time.perf_counter()
            found = replica.lookup("bench", "m@1", query, THRESHOLD)
            times.append(time.perf_counter() - started)
            hits += found is not None and found.payload == f"job-{target}" and near
    embeddings.embed(PROMPTS[:1])  # loads the model
    embed_s = []
    for prompt in PROMPTS * 4:
        started = time.perf_counter()
        embeddings.embed([prompt])
        embed_s.append(time.perf_counter() - started)
    return {
        "entries": entries,
        "lookups": lookups,
        "hit_rate": hits / lookups,
        "hit_p50_ms": percentile_ms(hit_s, 0.5),
        "hit_p99_ms": percentile_ms(hit_s, 0.99),
        "miss_p99_ms": percentile_ms(miss_s, 0.99),
        "add_s": add_s,
        "catch_up_s": catch_up_s,
        "embed_ms": 1000 * statistics.median(embed_s),
    }


def figures(r: dict[str, float]) -> list[Figure]:
    n = f"{r['entries']:,.0f}"
    return [
        Figure("Semantic lookup", r["hit_p99_ms"],
               f"p50 {r['hit_p50_ms']:.1f} ms, p99 {r['hit_p99_ms']:.1f} ms",
               f"{r['lookups']:,.0f} near-duplicate lookups among {n} entries of one scope and model "
               f"(Redis read + search, one BLAS thread; {r['hit_rate']:.0%} found their entry; past "
               f"{EXACT_SCAN_MAX:,} entries a Hamming cut, then exact scores); misses p99 "
               f"{r['miss_p99_ms']:.1f} ms; adding the {n} took {r['add_s']:.1f} s, a new "
               f"replica's catch-up {r['catch_up_s']:.1f} s",
               Goal("≤", GOAL_P99_MS, " ms", subject="p99")),
        Figure("Prompt embedding", r["embed_ms"], f"{r['embed_ms']:.0f} ms",
               "one short prompt through all-MiniLM-L6-v2 in numpy (no torch, one BLAS thread), "
               "model loaded; "
               "the median of 20"),
    ]  # fmt: skip


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    bench_env = BenchEnv()
    try:
        result = lookup_latency(bench_env, count, 1000)
    finally:
        bench_env.teardown()
    for shown in figures(result):
        print(f"{shown.name}: {shown.shown} (goal {shown.goal or '-'}) — {shown.how}")
