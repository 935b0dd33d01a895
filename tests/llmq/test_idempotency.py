"""Idempotency-Key on submit and bulk: replay, conflict, scope, expiry, twenty racing requests."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import partial

import httpx
import pytest
import sqlalchemy as sa

from llmq.db import session_scope
from llmq.keys import Limits, create_key, hash_key
from llmq.models import ApiKey, IdempotencyKey, Job
from llmq.queues import waiting_count
from tests.conftest import REDIS_PREFIX, make_key
from tests.tenancy_helpers import ApiServer

BODY = {"model": "idle", "prompt": "make this once", "max_tokens": 4}


def jobs_for(idem_key: str) -> int:
    with session_scope() as session:
        return session.scalar(
            sa.select(sa.func.count())
            .select_from(IdempotencyKey)
            .join(Job, Job.id == IdempotencyKey.job_id)
            .where(IdempotencyKey.key == idem_key)
        )


def test_same_key_and_body_replays_the_same_job(client, auth):
    idem = {"Idempotency-Key": f'"{uuid.uuid4()}"'}
    first = client.post("/v1/jobs", json=BODY, headers=auth | idem)
    again = client.post("/v1/jobs", json=dict(reversed(BODY.items())), headers=auth | idem)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert jobs_for(idem["Idempotency-Key"].strip('"')) == 1


def test_same_key_with_another_body_is_a_422(client, auth):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    assert client.post("/v1/jobs", json=BODY, headers=auth | idem).status_code == 202
    other = client.post("/v1/jobs", json=BODY | {"max_tokens": 5}, headers=auth | idem)
    assert other.status_code == 422
    problem = other.json()
    assert problem["type"] == "/problems/idempotency-key-reused"
    assert problem["errors"][0]["field"] == "Idempotency-Key"


def test_keys_are_scoped_per_api_key(client, auth, other_auth):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    mine = client.post("/v1/jobs", json=BODY, headers=auth | idem).json()
    theirs = client.post("/v1/jobs", json=BODY, headers=other_auth | idem).json()
    assert mine["id"] != theirs["id"]
    assert client.get(f"/v1/jobs/{mine['id']}", headers=other_auth).status_code == 404


@pytest.mark.parametrize("bad", ["", '""', "x" * 256, "has space", 'quo"te'])
def test_malformed_keys_are_a_400(client, auth, bad):
    response = client.post("/v1/jobs", json=BODY, headers=auth | {"Idempotency-Key": bad})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


def test_a_key_past_its_retention_makes_a_new_job(client, auth):
    key = str(uuid.uuid4())
    first = client.post("/v1/jobs", json=BODY, headers=auth | {"Idempotency-Key": key}).json()
    with session_scope() as session:
        session.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(created_at=sa.func.now() - sa.text("interval '25 hours'"))
        )
    second = client.post("/v1/jobs", json=BODY, headers=auth | {"Idempotency-Key": key}).json()
    assert second["id"] != first["id"]
    assert jobs_for(key) == 1  # the old row was replaced


def test_twenty_concurrent_identical_requests_create_one_job():
    servers = [ApiServer().wait_ready(), ApiServer().wait_ready()]
    try:
        plain = make_key("racer")
        headers = {"Authorization": f"Bearer {plain}", "Idempotency-Key": str(uuid.uuid4())}

        def post(i: int) -> httpx.Response:
            return httpx.post(
                f"{servers[i % 2].url}/v1/jobs", json=BODY, headers=headers, timeout=60
            )

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(post, range(20)))
    finally:
        for server in servers:
            server.stop()
    assert [r.status_code for r in responses] == [202] * 20, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    with session_scope() as session:
        made = session.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .join(ApiKey, ApiKey.id == Job.api_key_id)
            .where(ApiKey.key_hash == hash_key(plain))
        )
    assert made == 1 and jobs_for(headers["Idempotency-Key"]) == 1


BULK = {"jobs": [{"model": "idle", "prompt": f"bulk item {i}", "max_tokens": 4} for i in range(5)]}


def test_bulk_with_the_same_key_and_body_replays_the_same_ids(client, auth, redis_client):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    queued = waiting_count(redis_client, "idle", REDIS_PREFIX)
    first = client.post("/v1/jobs/bulk", json=BULK, headers=auth | idem)
    again = client.post("/v1/jobs/bulk", json=BULK, headers=auth | idem)
    assert first.status_code == again.status_code == 202
    assert again.json()["ids"] == first.json()["ids"] and len(first.json()["ids"]) == 5
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert waiting_count(redis_client, "idle", REDIS_PREFIX) == queued + 5  # one publish
    with session_scope() as session:
        ids = [uuid.UUID(i) for i in first.json()["ids"]]
        assert session.scalar(sa.select(sa.func.count()).where(Job.id.in_(ids))) == 5


def test_bulk_with_the_same_key_and_another_body_is_a_422(client, auth):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    assert client.post("/v1/jobs/bulk", json=BULK, headers=auth | idem).status_code == 202
    other = {"jobs": BULK["jobs"][:4]}
    response = client.post("/v1/jobs/bulk", json=other, headers=auth | idem)
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/idempotency-key-reused"


def test_a_key_used_on_submit_is_not_replayed_by_bulk(client, auth):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    assert client.post("/v1/jobs", json=BODY, headers=auth | idem).status_code == 202
    response = client.post("/v1/jobs/bulk", json={"jobs": [BODY]}, headers=auth | idem)
    assert response.status_code == 422


# "make this once" is 14 bytes: 14 + 8 template tokens + max_tokens 4 = 26 tokens charged,
# and on echo-priced a worst case of 22 * $0.001 + 4 * $0.002 = $0.030.
LIMITED = {
    "max_concurrent": {"max_concurrent": 1},
    "budget": {"budget_usd": Decimal("0.05"), "budget_period": "day"},
    "rpm": {"rpm": 1},
    "tpm": {"tpm": 26},
}


@pytest.mark.parametrize("limit", LIMITED)
def test_concurrent_retries_on_a_key_with_room_for_one_job_all_get_the_replay(client, limit):
    """Twins wait for the first request's transaction and answer with its job; none is
    refused by a limit the first one used up."""
    model = "echo-priced" if limit == "budget" else "parked"  # parked is free
    body = {"model": model, "prompt": "make this once", "max_tokens": 4}
    for _ in range(6):
        with session_scope() as session:
            _, plain = create_key(session, f"once-{limit}", limits=Limits(**LIMITED[limit]))
        headers = {"Authorization": f"Bearer {plain}", "Idempotency-Key": str(uuid.uuid4())}
        post = partial(client.post, "/v1/jobs", json=body, headers=headers)
        with ThreadPoolExecutor(12) as pool:
            responses = [future.result() for future in [pool.submit(post) for _ in range(12)]]
        assert [r.status_code for r in responses] == [202] * 12, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 11
