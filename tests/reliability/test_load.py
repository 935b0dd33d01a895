"""The load suite's locust users run against a real API and echo worker: a few seconds at a
low constant rate, every job final, nothing failed, the queue empty."""

from __future__ import annotations

import sqlalchemy as sa

from llmq.db import session_scope
from llmq.keys import hash_key
from llmq.models import ApiKey
from reliability import load
from tests.conftest import REDIS_PREFIX, REDIS_URL, WorkerProcess, make_key, wait_for
from tests.tenancy_helpers import ApiServer


def drained(key: str) -> bool:
    """The load's own jobs final (other tests share the database) and the echo queue empty."""
    with session_scope() as session:
        key_id = session.scalar(sa.select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    left = load.backlog(REDIS_URL, REDIS_PREFIX, key_ids=[key_id])
    return not left["jobs_not_final"] and not left["echo_queue"]


def test_locust_drives_a_short_constant_load(environment, tmp_path):
    worker = WorkerProcess("echo").wait_ready()
    server = ApiServer().wait_ready()
    try:
        key = make_key("load")
        stats = load.run_locust(server.url, [key], "", 2.0, 5, tmp_path)
        wait_for(lambda: drained(key), 60, "the load's jobs final and the echo queue empty")
    finally:
        server.stop()
        worker.stop()
    assert stats["errors"] == {}
    assert stats["jobs"] >= 5  # 2 jobs/s for 5 s, give or take the ramp
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]
