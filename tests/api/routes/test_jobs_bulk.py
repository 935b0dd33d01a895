"""POST /v1/jobs/bulk: one transaction, one pipeline, ids in order; one bad item writes nothing."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import Job
from llmq.queues import waiting_count
from tests.conftest import REDIS_PREFIX, wait_final


def _count() -> int:
    with session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Job))


def test_bulk_jobs_all_run_and_ids_come_back_in_order(client, auth, start_worker):
    items = [{"model": "echo", "prompt": f"item {i}", "metadata": {"i": i}} for i in range(300)]
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["count"] == 300 and len(set(body["ids"])) == 300
    start_worker("echo")
    for i in (0, 137, 299):
        job = wait_final(client, auth, body["ids"][i])
        assert job["status"] == "succeeded" and job["metadata"] == {"i": i}
        assert job["output"]["text"] == f"item {i}"
    assert all(wait_final(client, auth, job_id)["status"] == "succeeded" for job_id in body["ids"])


def test_one_bad_item_writes_nothing_and_names_its_index(client, auth, redis_client):
    items = [{"model": "idle", "prompt": f"ok {i}"} for i in range(10)]
    items[3] = {"model": "no-such-model", "prompt": "x"}
    items[7] = {"model": "idle", "prompt": "x", "max_tokens": "many"}
    before, queued = _count(), waiting_count(redis_client, "idle", REDIS_PREFIX)
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["errors"]]
    assert "jobs[7].max_tokens" in fields
    assert _count() == before and waiting_count(redis_client, "idle", REDIS_PREFIX) == queued

    del items[7]
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["jobs[3].model"]
    assert _count() == before and waiting_count(redis_client, "idle", REDIS_PREFIX) == queued


def test_bulk_size_limits(client, auth):
    assert client.post("/v1/jobs/bulk", json={"jobs": []}, headers=auth).status_code == 422
    too_many = {"jobs": [{"model": "idle", "prompt": "x"}] * 10_001}
    response = client.post("/v1/jobs/bulk", json=too_many, headers=auth)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "jobs"


def test_bulk_accepts_bodies_larger_than_a_single_submit(client, auth):
    items = [{"model": "parked", "prompt": "x" * 300} for _ in range(4000)]  # about 1.4 MB
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 202, response.text[:300]
    assert len(response.json()["ids"]) == 4000


def _limited_key(**limits) -> dict[str, str]:
    from llmq.db import session_scope
    from llmq.keys import Limits, create_key

    with session_scope() as session:
        _, plain = create_key(session, "bulk-limited", limits=Limits(**limits))
    return {"Authorization": f"Bearer {plain}"}


def test_bulk_counts_every_job_against_the_concurrency_limit(client):
    auth = _limited_key(max_concurrent=5)
    items = [{"model": "parked", "prompt": f"p{i}"} for i in range(6)]
    before = _count()
    refused = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert _count() == before
    assert client.post("/v1/jobs/bulk", json={"jobs": items[:5]}, headers=auth).status_code == 202


def test_bulk_reserves_the_budget_for_all_jobs(client):
    from decimal import Decimal

    auth = _limited_key(budget_usd=Decimal("1"), budget_period="day")
    items = [{"model": "echo-priced", "prompt": "x" * 50, "max_tokens": 16} for _ in range(200)]
    before = _count()
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 402, response.text  # each fits the budget; all do not
    assert response.json()["budget"]["period"] == "day"
    assert _count() == before
    assert client.post("/v1/jobs/bulk", json={"jobs": items[:5]}, headers=auth).status_code == 202


def test_bulk_resolves_each_distinct_webhook_hostname_once(client, auth, monkeypatch):
    from llmq import ssrf

    resolved: Counter[str] = Counter()
    real_resolve = ssrf._resolve

    def counting_resolve(host: str, port: int) -> list[str]:
        resolved[host] += 1
        return real_resolve(host, port)

    monkeypatch.setattr(ssrf, "_resolve", counting_resolve)
    hosts = ["localhost", "127.0.0.1", "127.0.0.2"]
    items = [
        {"model": "parked", "prompt": f"p{i}", "webhook_url": f"http://{hosts[i % 3]}:{8000 + i % 7}/h{i}"}
        for i in range(600)
    ]  # fmt: skip
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 202, response.text[:300]
    assert resolved == {"localhost": 1, "127.0.0.1": 1, "127.0.0.2": 1}


def test_a_webhook_host_that_does_not_resolve_names_every_item_that_uses_it(client, auth):
    items = [
        {"model": "parked", "prompt": f"p{i}", "webhook_url": "http://localhost:8080/ok"}
        for i in range(10)
    ]
    for i in (3, 7):
        items[i]["webhook_url"] = "http://no-such-host.invalid/hook"
    before = _count()
    response = client.post("/v1/jobs/bulk", json={"jobs": items}, headers=auth)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["jobs[3].webhook_url", "jobs[7].webhook_url"]
    assert all("'no-such-host.invalid' does not resolve" in e["message"] for e in errors)
    assert _count() == before
