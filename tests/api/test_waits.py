"""The per-key cap on open waits (long-polls and event streams), shared by every API replica;
and a wait that loses Redis."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api import waits
from llmq.db import session_scope
from llmq.errors import RateLimited
from llmq.keys import Caller, create_key
from llmq.models import Job
from reliability import services
from tests.conftest import REDIS_PREFIX, REDIS_URL, wait_for
from tests.tenancy_helpers import ApiServer

CAP = 2
PARKED = {"model": "parked", "prompt": "never runs"}


def new_key() -> tuple[uuid.UUID, dict[str, str]]:
    with session_scope() as session:
        row, plain = create_key(session, f"waits-{uuid.uuid4().hex[:6]}")
    return row.id, {"Authorization": f"Bearer {plain}"}


@pytest.fixture
def replicas(environment) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API replicas, each with its own process state, sharing Redis and Postgres."""
    from api.app import create_app
    from llmq.settings import Settings

    settings = Settings(max_open_waits_per_key=CAP)
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        yield one, two


def test_open_waits_are_capped_per_key_across_replicas(replicas, redis_client):
    one, two = replicas
    key_id, headers = new_key()
    open_waits = waits.waits_key(REDIS_PREFIX, key_id)
    job_id = one.post("/v1/jobs", json=PARKED, headers=headers).json()["id"]

    def long_poll():
        return one.get(f"/v1/jobs/{job_id}", params={"wait": 60}, headers=headers)

    def event_stream():
        with two.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
            return response.status_code, list(response.iter_lines())

    with ThreadPoolExecutor(2) as pool:
        poll, stream = pool.submit(long_poll), pool.submit(event_stream)
        wait_for(lambda: redis_client.zcard(open_waits) == CAP, 30, "both waits open")

        for replica, path in ((one, f"/v1/jobs/{job_id}"), (two, f"/v1/jobs/{job_id}/events")):
            refused = replica.get(path, params={"wait": 5}, headers=headers)
            assert refused.status_code == 429, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["violated-policies"] == ["open_waits"]

        assert one.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200  # no wait
        _, other = new_key()  # another key has caps of its own
        other_job = one.post("/v1/jobs", json=PARKED, headers=other).json()["id"]
        assert one.get(f"/v1/jobs/{other_job}", params={"wait": 1}, headers=other).is_success
        one.post(f"/v1/jobs/{other_job}/cancel", headers=other)

        assert one.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
        assert poll.result(timeout=60).json()["status"] == "cancelled"
        status, lines = stream.result(timeout=60)
        assert status == 200 and "event: job" in lines

    wait_for(lambda: redis_client.zcard(open_waits) == 0, 30, "both waits released")
    assert one.get(f"/v1/jobs/{job_id}", params={"wait": 1}, headers=headers).status_code == 200


def test_a_lease_left_by_a_dead_replica_ends_by_itself():
    caller = Caller(key_id=uuid.uuid4(), name="gone", is_admin=False)

    async def acquire(lease_s: float) -> bool:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await waits.acquire(client, REDIS_PREFIX, caller, CAP, lease_s)
            return True
        except RateLimited:
            return False
        finally:
            await client.aclose()

    assert asyncio.run(acquire(1)) and asyncio.run(acquire(1))  # never released
    assert not asyncio.run(acquire(60))
    wait_for(lambda: asyncio.run(acquire(60)), 30, "the dead leases to end")


WAIT_MESSAGE = {"role": "user", "content": "wait"}


@pytest.fixture
def private_redis(tmp_path) -> Iterator[services.PrivateRedis]:
    """A redis-server of this test's own, so that stopping it touches no one else's."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = services.PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def test_losing_redis_while_waiting_answers_wait_interrupted_and_keeps_the_jobs(
    environment, private_redis
):
    """An OpenAI request waiting on its job loses Redis: the answer names the job, which
    stays queued, and says not to retry (the `openai` client's own retries stay on)."""
    server = ApiServer({"LLMQ_REDIS_URL": private_redis.url}).wait_ready()
    try:
        key_id, headers = new_key()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=headers["Authorization"][7:])

        def jobs() -> list[tuple[str, str]]:
            with session_scope() as session:
                query = sa.select(Job.id, Job.status).where(Job.api_key_id == key_id)
                return [
                    (str(i), status)
                    for i, status in session.execute(query.order_by(Job.created_at))
                ]

        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.chat.completions.create, model="parked", messages=[WAIT_MESSAGE]
            )
            wait_for(lambda: len(jobs()) == 1, 30, "the job queued")
            private_redis.kill()
            with pytest.raises(openai.APIStatusError) as interrupted:
                waiting.result(timeout=60)
        assert interrupted.value.status_code == 503
        assert interrupted.value.code == "wait_interrupted"
        # One job, still queued: the client did not send the request again.
        assert [(i, "queued") for i in interrupted.value.body["job_ids"]] == jobs()

        private_redis.start()
        stream = client.chat.completions.create(
            model="parked", messages=[WAIT_MESSAGE], stream=True
        )
        with pytest.raises(openai.APIError, match="lost Redis or Postgres"):
            for _ in stream:  # the first chunk, the role, comes while the job is queued
                private_redis.kill()
        assert [status for _, status in jobs()] == ["queued", "queued"]
    finally:
        server.stop()
