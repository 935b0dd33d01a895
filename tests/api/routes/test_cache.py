"""The exact cache end to end: a live API, Redis, Postgres and an echo worker."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from llmq import metrics
from llmq.cache import AnswerCache
from llmq.db import session_scope
from llmq.keys import Limits, create_key
from llmq.models import Job, LedgerEntry
from tests.conftest import CACHE_ON, REDIS_PREFIX, serving, wait_final, wait_for
from tests.tenancy_helpers import Receiver, WebhookWorker

MODEL = "echo-cache"  # priced: a run costs 1000/2000 per Mtok, a cache hit 100


pytestmark = pytest.mark.usefixtures("cache_on")


@pytest.fixture(scope="module")
def worker(environment):
    """A worker that keeps answers (the suite runs with the cache off)."""
    yield from serving(MODEL, CACHE_ON)


def body(**fields) -> dict:
    """A greedy job with a prompt of its own, so tests never meet each other's entries."""
    return {"model": MODEL, "prompt": f"cache {uuid.uuid4().hex} three", "temperature": 0} | fields


def row(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        session.expunge(job)
        return job


def ledger(job_id: str) -> LedgerEntry:
    with session_scope() as session:
        entry = session.scalars(
            sa.select(LedgerEntry).where(LedgerEntry.job_id == uuid.UUID(job_id))
        ).one()
        session.expunge(entry)
        return entry


def kept(redis_client, job_id: str) -> bool:
    """Whether the job's answer is in the cache (the worker keeps it after its commit)."""
    key = row(job_id).cache_key
    store = AnswerCache(redis_client, REDIS_PREFIX, 60, 1, 1)
    return key is not None and store.get_many([key]) != [None]


def run(client, auth, redis_client, job: dict, **headers) -> dict:
    """Submit a job, let the worker answer it and keep its answer."""
    first = client.post("/v1/jobs", json=job, headers=auth | headers).json()
    done = wait_final(client, auth, first["id"])
    assert done["status"] == "succeeded" and done["cached"] is False
    wait_for(lambda: kept(redis_client, first["id"]), 30, "the answer to be kept")
    return done


def hits() -> float:
    return metrics.CACHE_HITS.labels(MODEL)._value.get()


def test_a_repeated_greedy_job_is_answered_at_submit(client, auth, redis_client, worker):
    job = body()
    original = run(client, auth, redis_client, job)
    before = hits()
    response = client.post("/v1/jobs", json=job, headers=auth)
    assert response.status_code == 202
    hit = response.json()
    assert hit["status"] == "succeeded" and hit["cached"] is True
    assert hit["output"] == original["output"]
    assert hit["attempts"] == 0 and hit["started_at"] is None  # no worker claimed it
    assert hit["usage"]["prompt_tokens"] == original["usage"]["prompt_tokens"] == 3
    assert hit["usage"]["completion_tokens"] == original["usage"]["completion_tokens"]
    assert hit["usage"]["cost_usd"] == "0.0006"  # 6 tokens at the cache-hit price
    assert hits() == before + 1
    entry = ledger(hit["id"])
    assert entry.cached and entry.cost_usd == Decimal("0.0006") and entry.prompt_tokens == 3
    assert entry.created_at.isoformat() == hit["finished_at"]  # one finish, one time
    assert ledger(original["id"]).cached is False
    assert row(hit["id"]).worker is None
    again = client.get(f"/v1/jobs/{hit['id']}", params={"wait": 5}, headers=auth).json()
    assert again["status"] == "succeeded" and again["usage"]["cost_usd"] == "0.0006"
    events = client.get(f"/v1/jobs/{hit['id']}/events", headers=auth).text
    assert original["output"]["text"] in events and '"cached": true' in events


def test_a_sampled_job_never_uses_the_cache(client, auth, worker):
    job = body(temperature=0.7)
    for _ in range(2):
        first = client.post("/v1/jobs", json=job, headers=auth).json()
        assert first["status"] == "queued"
        done = wait_final(client, auth, first["id"])
        assert done["cached"] is False and done["attempts"] == 1
        assert row(first["id"]).cache_key is None


def test_a_seeded_job_is_cached(client, auth, redis_client, worker):
    job = body(temperature=0.7, seed=11)
    run(client, auth, redis_client, job)
    assert client.post("/v1/jobs", json=job, headers=auth).json()["cached"] is True


def test_another_key_never_gets_your_answer(client, auth, other_auth, redis_client, worker):
    job = body()
    run(client, auth, redis_client, job)
    theirs = client.post("/v1/jobs", json=job, headers=other_auth).json()
    assert theirs["status"] == "queued" and theirs["cached"] is False
    wait_final(client, other_auth, theirs["id"])


def test_a_shared_cache_answers_every_key(client, auth, other_auth, redis_client, worker):
    state = client.app.state
    settings = state.settings
    state.settings = settings.model_copy(update={"cache_shared_across_keys": True})
    try:
        job = body()
        run(client, auth, redis_client, job)
        assert client.post("/v1/jobs", json=job, headers=other_auth).json()["cached"] is True
    finally:
        state.settings = settings


@pytest.mark.parametrize(
    ("change", "headers"),
    [({"cache": False}, {}), ({}, {"Cache-Control": "no-store"})],
    ids=["cache-false", "no-store"],
)
def test_opting_out_neither_reads_nor_writes(client, auth, redis_client, worker, change, headers):
    job = body()
    run(client, auth, redis_client, job)
    out = client.post("/v1/jobs", json=job | change, headers=auth | headers).json()
    assert out["status"] == "queued" and out["cached"] is False
    assert row(out["id"]).cache_key is None  # its answer is not kept either
    wait_final(client, auth, out["id"])
    fresh = body()
    fresh_job = client.post("/v1/jobs", json=fresh | change, headers=auth | headers).json()
    wait_final(client, auth, fresh_job["id"])
    assert client.post("/v1/jobs", json=fresh, headers=auth).json()["cached"] is False


def test_a_changed_catalog_entry_misses(client, auth, redis_client, worker, monkeypatch):
    job = body()
    run(client, auth, redis_client, job)
    catalog = client.app.state.catalog
    changed = catalog.models[MODEL].model_copy(update={"max_new_tokens": 300})
    monkeypatch.setitem(catalog.models, MODEL, changed)
    out = client.post("/v1/jobs", json=job, headers=auth).json()
    assert out["cached"] is False
    wait_final(client, auth, out["id"])


def test_an_expired_answer_misses(client, auth, redis_client, start_worker):
    start_worker("echo", LLMQ_CACHE_TTL_S="1")  # a worker that keeps answers for a second
    job = body(model="echo")
    first = client.post("/v1/jobs", json=job, headers=auth).json()
    wait_final(client, auth, first["id"])
    entry = AnswerCache(redis_client, REDIS_PREFIX, 60, 1, 1).entry_key(row(first["id"]).cache_key)
    wait_for(lambda: redis_client.exists(entry) == 0, 30, "the answer to expire")
    out = client.post("/v1/jobs", json=job, headers=auth).json()
    assert out["cached"] is False
    wait_final(client, auth, out["id"])


def test_a_hit_sends_its_webhook(client, auth, redis_client, worker):
    job = body()
    run(client, auth, redis_client, job)
    sender, receiver = WebhookWorker().wait_ready(), Receiver()
    try:
        hit = client.post("/v1/jobs", json=job | {"webhook_url": receiver.url}, headers=auth)
        assert hit.json()["cached"] is True
        (delivery,) = receiver.wait_for(1, timeout_s=30)
    finally:
        receiver.close()
        sender.stop()
    event = json.loads(delivery.body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == hit.json()["id"]
    assert event["data"]["cached"] is True


def test_openai_routes_and_bulk_use_the_cache(client, auth, redis_client, worker):
    prompt = f"cache {uuid.uuid4().hex} chat"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    first = client.post("/v1/chat/completions", json=chat, headers=auth)
    wait_for(lambda: kept(redis_client, first.headers["x-llmq-job-id"]), 30, "kept")
    second = client.post("/v1/chat/completions", json=chat, headers=auth)
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert row(second.headers["x-llmq-job-id"]).cached
    streamed = client.post("/v1/chat/completions", json=chat | {"stream": True}, headers=auth)
    assert row(streamed.headers["x-llmq-job-id"]).cached and prompt.split()[1] in streamed.text
    skipped = client.post(
        "/v1/chat/completions", json=chat, headers=auth | {"Cache-Control": "no-store"}
    )
    assert not row(skipped.headers["x-llmq-job-id"]).cached
    # n seeded choices are each expected to differ: none is cached, nor kept
    seeded = client.post(
        "/v1/chat/completions", json=chat | {"temperature": 0.5, "seed": 3, "n": 2}, headers=auth
    )
    assert all(row(i).cache_key is None for i in seeded.headers["x-llmq-job-id"].split(","))
    job = body()
    run(client, auth, redis_client, job)
    bulk = client.post("/v1/jobs/bulk", json={"jobs": [job, job, body()]}, headers=auth).json()
    assert [row(i).cached for i in bulk["ids"]] == [True, True, False]


def limited_key(**limits) -> dict[str, str]:
    with session_scope() as session:
        _, plain = create_key(session, f"cache-{uuid.uuid4().hex[:6]}", limits=Limits(**limits))
    return {"Authorization": f"Bearer {plain}"}


# Reserved at submit: 24 prompt tokens (16 bytes + chat overhead) at $1000/Mtok and 4 at
# $2000/Mtok, $0.032; run, it costs 3 + 3 tokens, $0.009; a hit, 6 tokens at $100/Mtok.
PRICED = {"model": MODEL, "prompt": "alpha beta gamma", "max_tokens": 4, "temperature": 0}


def test_a_hit_is_admitted_at_its_cache_price(client, redis_client, worker):
    auth = limited_key(budget_usd=Decimal("0.04"), budget_period="day")
    run(client, auth, redis_client, PRICED)  # $0.009 spent: another run's $0.032 no longer fits
    refused = client.post("/v1/jobs", json=PRICED | {"cache": False}, headers=auth)
    assert refused.status_code == 402
    hit = client.post("/v1/jobs", json=PRICED, headers=auth).json()
    assert hit["cached"] is True and hit["usage"]["cost_usd"] == "0.0006"
    total = client.get("/v1/usage", headers=auth).json()["total"]
    assert (total["jobs"], total["cached_jobs"], total["cost_usd"]) == (2, 1, "0.0096")
    assert (total["prompt_tokens"], total["completion_tokens"]) == (6, 6)


def test_a_hit_counts_against_the_request_rate(client, redis_client, worker):
    auth = limited_key(rpm=2)
    run(client, auth, redis_client, PRICED)
    assert client.post("/v1/jobs", json=PRICED, headers=auth).json()["cached"] is True
    assert client.post("/v1/jobs", json=PRICED, headers=auth).status_code == 429
