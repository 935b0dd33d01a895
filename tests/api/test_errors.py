"""When Postgres or Redis does not answer: no lost or doubled job, and a 503 that names no host.

Outages here are real: the API under test is pointed at a port where nothing listens. The
shared Postgres and Redis are never stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from llmq import job_queries, queues
from llmq.db import session_scope
from llmq.models import Job
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, make_key
from tests.tenancy_helpers import ApiServer

NOTHING_LISTENS = "127.0.0.1:1"
BODY = {"model": "parked", "prompt": "hello"}


def _assert_names_no_host(text: str) -> None:
    assert NOTHING_LISTENS not in text and "127.0.0.1" not in text and "redis://" not in text
    assert "postgresql" not in text


def _rows(ids: list[str]) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(sa.select(Job.status).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        )


@pytest.fixture
def broker_down(monkeypatch, environment) -> Iterator[TestClient]:
    """An API whose Redis (broker, pub/sub, limiter) is a port where nothing listens.

    Set in the environment, so the process-wide settings and Celery app see it too while the
    test runs; both caches are emptied before and after."""
    from api.app import create_app

    def forget() -> None:
        get_settings.cache_clear()
        queues.get_celery.cache_clear()

    monkeypatch.setenv("LLMQ_REDIS_URL", f"redis://{NOTHING_LISTENS}/0")
    forget()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as local:
            yield local
    finally:
        monkeypatch.undo()
        forget()


def _queued_messages(redis_client) -> bytes:
    """Every message waiting in the parked model's queue lists on the real Redis."""
    return b"".join(
        b"".join(redis_client.lrange(key, 0, -1))
        for key in queues.queue_keys("parked", REDIS_PREFIX)
    )


def test_a_submit_whose_publish_fails_is_kept_and_a_retry_makes_no_second_job(
    broker_down, redis_client
):
    headers = {"Authorization": f"Bearer {make_key('publish-fails')}"}
    idem = {**headers, "Idempotency-Key": uuid.uuid4().hex}

    first = broker_down.post("/v1/jobs", json=BODY, headers=idem)
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["status"] == "queued" and first.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].encode() not in _queued_messages(redis_client)  # the publish failed
    assert _rows([job["id"]]) == ["queued"]  # durable: the sweeper publishes it
    with session_scope() as session:
        stale = job_queries.stale_queued(session, timedelta(0), ["parked"])
    assert uuid.UUID(job["id"]) in stale["parked"]

    retry = broker_down.post("/v1/jobs", json=BODY, headers=idem)
    assert retry.status_code == 202 and retry.json()["id"] == job["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"

    bulk_body = {"jobs": [BODY, BODY]}
    bulk_idem = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    bulk = broker_down.post("/v1/jobs/bulk", json=bulk_body, headers=bulk_idem)
    assert bulk.status_code == 202, bulk.text
    assert _rows(bulk.json()["ids"]) == ["queued", "queued"]
    again = broker_down.post("/v1/jobs/bulk", json=bulk_body, headers=bulk_idem)
    assert again.status_code == 202 and again.json()["ids"] == bulk.json()["ids"]

    listed = broker_down.get("/v1/jobs", params={"limit": 100}, headers=headers).json()["data"]
    assert len(listed) == 3  # one job and one bulk of two, whatever the retries
    for response in (first, retry, bulk, again):
        _assert_names_no_host(response.text)


def test_redis_down_is_503_with_retry_after(broker_down):
    """In OpenAI's envelope on an OpenAI route (/v1/models reads Redis for its live fields)."""
    headers = {"Authorization": f"Bearer {make_key('redis-down')}"}
    response = broker_down.get("/v1/models", headers=headers)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    _assert_names_no_host(response.text)


def test_an_openai_route_without_redis_makes_no_job(broker_down):
    """Its 503 comes before admission, so the `openai` client's retry is safe."""
    headers = {"Authorization": f"Bearer {make_key('redis-down-chat')}"}
    body = {"model": "parked", "messages": [{"role": "user", "content": "hi"}]}
    response = broker_down.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert broker_down.get("/v1/jobs", headers=headers).json()["data"] == []


@pytest.fixture(scope="module")
def database_down(environment) -> Iterator[ApiServer]:
    """A real API process whose Postgres is a port where nothing listens."""
    server = ApiServer(
        {"LLMQ_DATABASE_URL": f"postgresql+psycopg://postgres:pw@{NOTHING_LISTENS}/llmq"}
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/jobs", None), ("POST", "/v1/jobs", BODY), ("GET", "/v1/usage", None)],
)
def test_database_down_is_503_with_retry_after(database_down, method, path, body):
    import httpx

    headers = {"Authorization": f"Bearer {make_key('db-down')}"}  # well formed; unreadable
    response = httpx.request(
        method, f"{database_down.url}{path}", json=body, headers=headers, timeout=60
    )
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["detail"] == "the database is unavailable; retry shortly"
    _assert_names_no_host(response.text)
