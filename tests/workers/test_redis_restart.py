"""A worker rides out a Redis restart: same process, beating again, taking new jobs.

The broker is a private redis-server on a port of its own, restarted while the worker holds
jobs; the machine's shared Redis is never touched.
"""

from __future__ import annotations

import shutil

import pytest
import redis

from llmq import events
from reliability import services
from tests.conftest import REDIS_PREFIX, wait_final, wait_for

MODEL = "echo-slow"  # 1.5 s per batch: jobs are in flight when Redis goes away

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture
def private_redis(tmp_path):
    server = services.PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_api(private_redis, environment):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from llmq.settings import get_settings

    settings = get_settings().model_copy(update={"redis_url": private_redis.url})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _submit(client, auth, count: int) -> list[str]:
    body = {"model": MODEL, "prompt": "one two three", "temperature": 0}
    ids = []
    for _ in range(count):
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code in (200, 201, 202), response.text
        ids.append(response.json()["id"])
    return ids


def _beating(url: str) -> bool:
    try:
        return events.live_workers(redis.Redis.from_url(url), REDIS_PREFIX, MODEL) > 0
    except redis.RedisError:
        return False


@pytest.mark.parametrize("keep_data", [False, True], ids=["empty", "with-data"])
def test_worker_survives_redis_restart(start_worker, private_redis, private_api, auth, keep_data):
    worker = start_worker(MODEL, wait=False, LLMQ_REDIS_URL=private_redis.url)
    wait_for(lambda: _beating(private_redis.url) or worker.proc.poll() is not None, 120, "ready")
    assert worker.proc.poll() is None, worker.output()
    pid = worker.proc.pid

    before = _submit(private_api, auth, 4)
    wait_for(
        lambda: any(
            private_api.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "running"
            for job_id in before
        ),
        30,
        "a job running",
    )
    private_redis.restart(keep_data=keep_data)
    client = redis.Redis.from_url(private_redis.url)
    for key in client.scan_iter(match=events.worker_pattern(REDIS_PREFIX, MODEL)):
        client.delete(key)  # a heartbeat kept in the snapshot must not count: wait for a new one

    wait_for(lambda: _beating(private_redis.url) or worker.proc.poll() is not None, 30, "beat")
    assert worker.proc.poll() is None, f"worker exited:\n{worker.output()}"
    assert worker.proc.pid == pid

    after = _submit(private_api, auth, 3)
    for job_id in after:
        assert wait_final(private_api, auth, job_id, timeout_s=40)["status"] == "succeeded", (
            worker.output()
        )
    assert worker.proc.poll() is None, f"worker exited:\n{worker.output()}"
    output = worker.output()
    assert "Unrecoverable error" not in output
    assert "Failed to cancel active request" not in output  # the threads pool cannot cancel


def test_worker_that_stops_on_an_error_exits_nonzero(start_worker):
    """An unrecoverable error (here: weights that cannot load) is a crash, not a clean stop."""
    worker = start_worker("pool-broken", wait=False)
    wait_for(lambda: worker.proc.poll() is not None, 120, "the broken worker to exit")
    assert "Unrecoverable error" in worker.output()
    assert worker.proc.returncode != 0, worker.output()
