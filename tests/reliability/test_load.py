"""The load suite's locust users run against a real API and echo worker: a few seconds at a
low constant rate, every job final, nothing failed, the queue empty."""

from __future__ import annotations

from reliability import load
from tests.conftest import REDIS_PREFIX, REDIS_URL, WorkerProcess, make_key, wait_for
from tests.tenancy_helpers import ApiServer


def drained() -> bool:
    left = load.backlog(REDIS_URL, REDIS_PREFIX)
    return not left["jobs_not_final"] and not left["echo_queue"]


def test_locust_drives_a_short_constant_load(environment, tmp_path):
    worker = WorkerProcess("echo").wait_ready()
    server = ApiServer().wait_ready()
    try:
        stats = load.run_locust(server.url, [make_key("load")], "", 2.0, 5, tmp_path)
        wait_for(drained, 60, "the load's jobs final and the echo queue empty")
    finally:
        server.stop()
        worker.stop()
    assert stats["errors"] == {}
    assert stats["jobs"] >= 5  # 2 jobs/s for 5 s, give or take the ramp
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]
