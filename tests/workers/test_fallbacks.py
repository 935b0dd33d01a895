"""Fallbacks and circuit breakers with real workers, Redis, Postgres and two API processes.

The `mismatched*` models (tests/conftest.py) fail, in the engine, every prompt with a token
past their weights' vocabulary and answer prompts made of the first tokens: a real model
that is broken for some jobs, as a checkpoint paired with the wrong tokenizer is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from cli.devstack import free_port
from llmq.db import session_scope
from llmq.models import LedgerEntry
from tests.conftest import WorkerProcess, serving, wait_final, wait_for
from tests.llmq.test_metrics import samples, value
from tests.tenancy_helpers import ApiServer

FAILS = "The quick brown fox"  # tokens past the weights' 64: the engine raises
ANSWERED = "0123"  # the first tokens only: the model answers


@pytest.fixture(scope="module")
def fallback_echo(environment) -> Iterator[WorkerProcess]:
    yield from serving("fallback-echo")


@pytest.fixture(scope="module")
def replica(environment) -> Iterator[ApiServer]:
    """A second API process, its internal metrics on a port of its own."""
    port = free_port()
    server = ApiServer({"LLMQ_API_METRICS_PORT": str(port), "LLMQ_API_METRICS_HOST": "127.0.0.1"})
    server.metrics_url = f"http://127.0.0.1:{port}"
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def submit(client, auth, model: str, prompt: str) -> dict:
    response = client.post(
        "/v1/jobs", json={"model": model, "prompt": prompt, "temperature": 0}, headers=auth
    )
    assert response.status_code == 202, response.text
    return response.json()


def circuit(api, auth, model: str) -> str:
    response = api.get(f"/v1/models/{model}", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["circuit"]


def ledger(job_ids: list[str]) -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(LedgerEntry.job_id, LedgerEntry.model, LedgerEntry.cost_usd).where(
                LedgerEntry.job_id.in_([uuid.UUID(i) for i in job_ids])
            )
        ).all()
    return [(str(r.job_id), r.model, r.cost_usd) for r in rows]


def test_a_failing_model_opens_its_circuit_everywhere_and_its_jobs_fall_back_charged_once(
    client, auth, replica, start_worker, fallback_echo
):
    start_worker("mismatched")
    ids = [submit(client, auth, "mismatched", FAILS)["id"] for _ in range(2)]
    finals = [wait_final(client, auth, i, 120) for i in ids]
    for job in finals:
        assert job["status"] == "succeeded", job
        assert job["model"] == "fallback-echo"
        (hop,) = job["hops"]
        assert hop["model"] == "mismatched" and hop["to"] == "fallback-echo"
        assert hop["reason"] == "engine_error" and hop["at"]
        assert job["usage"]["cost_usd"] is not None
    # One ledger row each, for the model that answered, at its price.
    rows = ledger(ids)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(model == "fallback-echo" and cost > 0 for _, model, cost in rows)

    # Two failures within the window: open, as this API, another API process and its
    # metrics all see it.
    headers = auth
    assert circuit(client, headers, "mismatched") == "open"
    with httpx.Client(base_url=replica.url) as other:
        assert circuit(other, headers, "mismatched") == "open"
        assert circuit(other, headers, "fallback-echo") == "closed"
    page = samples(httpx.get(f"{replica.metrics_url}/metrics").text)
    assert value(page, "llmq_circuit_state", model="mismatched") == 1
    assert value(page, "llmq_circuit_state", model="fallback-echo") == 0

    # Submitted while open (to the other replica): straight to the fallback, hop recorded.
    with httpx.Client(base_url=replica.url) as other:
        routed = submit(other, headers, "mismatched", ANSWERED)
    assert routed["model"] == "fallback-echo"
    assert [h["reason"] for h in routed["hops"]] == ["circuit_open"]
    done = wait_final(client, auth, routed["id"], 60)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert [m for _, m, _ in ledger([routed["id"]])] == ["fallback-echo"]


def test_a_half_open_probe_that_succeeds_closes_the_circuit(
    client, auth, start_worker, fallback_echo
):
    start_worker("mismatched-probe")
    failed = wait_final(client, auth, submit(client, auth, "mismatched-probe", FAILS)["id"], 120)
    assert failed["model"] == "fallback-echo" and failed["status"] == "succeeded"
    assert circuit(client, auth, "mismatched-probe") in ("open", "half_open")
    wait_for(lambda: circuit(client, auth, "mismatched-probe") == "half_open", 60, "half-open")
    probe = submit(client, auth, "mismatched-probe", ANSWERED)
    assert probe["model"] == "mismatched-probe" and probe["hops"] == []  # let through
    done = wait_final(client, auth, probe["id"], 60)
    assert done["status"] == "succeeded" and done["model"] == "mismatched-probe", done
    assert circuit(client, auth, "mismatched-probe") == "closed"
    assert [m for _, m, _ in ledger([probe["id"]])] == ["mismatched-probe"]


def test_a_job_whose_chain_is_exhausted_fails_with_the_last_error(client, auth, start_worker):
    start_worker("mismatched-first")
    start_worker("mismatched-last")
    job = wait_final(client, auth, submit(client, auth, "mismatched-first", FAILS)["id"], 120)
    assert job["status"] == "failed" and job["model"] == "mismatched-last"
    assert job["error"]["code"] == "engine_error"
    assert [(h["model"], h["to"]) for h in job["hops"]] == [("mismatched-first", "mismatched-last")]
    assert [m for _, m, _ in ledger([job["id"]])] == ["mismatched-last"]  # one row


def test_jobs_queued_when_the_circuit_opens_are_moved_by_the_sweeper(
    client, auth, redis_client, fallback_echo
):
    from llmq import breakers
    from llmq.catalog import get_catalog
    from llmq.queues import get_celery
    from llmq.settings import get_settings
    from scheduler.sweeper import Sweeper
    from tests.conftest import REDIS_PREFIX

    job = submit(client, auth, "stranded", ANSWERED)  # closed: it queues where it was sent
    assert job["model"] == "stranded" and job["hops"] == []
    # What a worker of the model reports when a job fails for the model's sake.
    breakers.record_outcomes(redis_client, REDIS_PREFIX, get_catalog().get("stranded"), [False])
    assert circuit(client, auth, "stranded") == "open"
    report = Sweeper(get_settings(), redis_client, get_celery(), ["stranded"]).sweep()
    assert report.fell_back == [job["id"]]
    done = wait_final(client, auth, job["id"], 60)
    assert done["status"] == "succeeded" and done["model"] == "fallback-echo"
    assert [(h["model"], h["reason"]) for h in done["hops"]] == [("stranded", "circuit_open")]
