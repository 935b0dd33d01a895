"""The `hf-continuous` engine through a real worker: per-job budgets, stops, streaming, and jobs
joining a batch that is already running."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from tests.api.routes.test_streams import first_new_pair, read_events
from tests.conftest import wait_final, wait_for


@pytest.fixture(scope="module")
def cb_worker(environment):
    from tests.conftest import WorkerProcess

    worker = WorkerProcess("tiny-cb").wait_ready()
    yield worker
    worker.stop()


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


def submit(client, auth, **body) -> str:
    body = {"model": "tiny-cb", "temperature": 0, **body}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until_running(client, auth, job_id: str) -> None:
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] != "queued",
        30,
        f"job {job_id} to start",
        interval_s=0.005,  # the tests act on the job while it runs, which is not long
    )


def test_each_job_keeps_its_budget_and_matches_the_batch_engine(
    client, auth, cb_worker, tiny_worker
):
    budgets = [1, 5, 12]
    cb = [
        wait_final(client, auth, submit(client, auth, prompt="Hello world", max_tokens=n))
        for n in budgets
    ]
    for n, job in zip(budgets, cb, strict=True):
        assert job["status"] == "succeeded", job
        assert job["usage"]["completion_tokens"] == n
        assert job["output"]["finish_reason"] == "length"
    static = wait_final(
        client, auth, submit(client, auth, model="tiny", prompt="Hello world", max_tokens=12)
    )
    assert cb[-1]["output"]["text"] == static["output"]["text"]  # same greedy answer


def test_stop_sequence_and_streaming(client, auth, cb_worker):
    probe = wait_final(client, auth, submit(client, auth, prompt="Hello world", max_tokens=24))
    stop = first_new_pair(probe["output"]["text"])
    job_id = submit(client, auth, prompt="Hello world", max_tokens=24, stop=[stop])
    events = read_events(client, auth, job_id)
    final = events[-1][2]
    assert final["output"]["finish_reason"] == "stop"
    assert final["output"]["text"] == probe["output"]["text"][: probe["output"]["text"].find(stop)]
    assert "".join(d["text"] for kind, _, d in events if kind == "token") == final["output"]["text"]


def test_a_short_job_joins_a_running_batch_and_leaves_first(client, auth, cb_worker):
    long_id = submit(client, auth, prompt="A long story", max_tokens=230)
    wait_until_running(client, auth, long_id)
    short_id = submit(client, auth, prompt="Quick", max_tokens=2)
    short, long = wait_final(client, auth, short_id), wait_final(client, auth, long_id)
    assert short["status"] == long["status"] == "succeeded"
    assert long["usage"]["completion_tokens"] == 230
    assert short["finished_at"] < long["finished_at"]  # it did not wait for the long job


def test_jobs_sharing_the_device_split_its_time(client, auth, cb_worker):
    """Each job pays for its share of the intervals it ran in; the shares never add up to more
    than the time the two jobs were on the device."""
    long_id = submit(client, auth, prompt="A long story", max_tokens=120)
    wait_until_running(client, auth, long_id)
    short_id = submit(client, auth, prompt="Quick", max_tokens=20)
    short, long = wait_final(client, auth, short_id), wait_final(client, auth, long_id)
    costs = [Decimal(job["usage"]["gpu_cost_usd"]) for job in (short, long)]
    assert all(cost > 0 for cost in costs) and costs[0] < costs[1]
    span_s = (iso(long["finished_at"]) - iso(long["started_at"])).total_seconds()
    assert sum(costs) <= Decimal(str(span_s + 0.05)) * Decimal("3.6") / 3600


def test_prompt_longer_than_the_context_fails_alone(client, auth, cb_worker):
    big = submit(client, auth, prompt="word " * 400, max_tokens=4)
    ok = submit(client, auth, prompt="fine", max_tokens=4)
    assert wait_final(client, auth, big)["error"]["code"] == "context_length_exceeded"
    assert wait_final(client, auth, ok)["status"] == "succeeded"


def test_cancel_stops_a_running_job_at_its_next_token(client, auth, cb_worker):
    job_id = submit(client, auth, prompt="Cancel me", max_tokens=230)
    wait_until_running(client, auth, job_id)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200

    def accounted() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        return job if job["usage"] is not None else None

    job = wait_for(accounted, 30, "the cancelled job's usage")
    assert job["status"] == "cancelled"
    assert job["output"]["finish_reason"] == "cancelled"
    assert job["usage"]["completion_tokens"] < 230
