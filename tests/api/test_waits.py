"""The per-key cap on open waits (long-polls and event streams), shared by every API replica."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from api import waits
from llmq.db import session_scope
from llmq.errors import RateLimited
from llmq.keys import Caller, create_key
from tests.conftest import REDIS_PREFIX, REDIS_URL, wait_for

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
