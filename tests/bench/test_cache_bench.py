"""The cache-hit bench runs against a real API and echo worker (its timings are not judged)."""

from __future__ import annotations

import pytest

from bench import cache
from tests.conftest import CACHE_ON


@pytest.mark.usefixtures("cache_on")
def test_the_cache_hit_bench_times_answered_submits(client, auth, start_worker):
    start_worker("echo", **CACHE_ON)
    client.headers.update(auth)
    try:
        r = cache.hit_latency_ms(client, hits=5)
    finally:
        del client.headers["Authorization"]
    assert r["hits"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"]
    print(cache.figure(r).shown)
