"""The cache-hit bench runs against a real API and echo worker (its timings are not judged)."""

from __future__ import annotations

from bench import cache
from tests.conftest import serving


def test_the_cache_hit_bench_times_answered_submits(client, auth):
    client.headers.update(auth)
    try:
        for _ in serving("echo"):
            r = cache.hit_latency_ms(client, hits=5)
    finally:
        del client.headers["Authorization"]
    assert r["hits"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"]
    print(cache.figure(r).shown)
