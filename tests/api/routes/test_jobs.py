"""The core path through real Redis, Postgres and a Celery worker running the tiny model."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import LedgerEntry
from llmq.queues import Message, get_celery, publish_generate, waiting_count
from tests.conftest import REDIS_PREFIX, WorkerProcess, wait_final, wait_for


def submit(client, auth, **body) -> dict:
    body.setdefault("model", "tiny")
    body.setdefault("temperature", 0)
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()


def ledger_rows(job_id: str) -> list[LedgerEntry]:
    with session_scope() as session:
        return list(session.scalars(sa.select(LedgerEntry).where(LedgerEntry.job_id == job_id)))


def task_ends(worker: WorkerProcess, job_id: str) -> int:
    """How many deliveries of the job's task the worker has finished (Celery logs each)."""
    return sum(f"[{job_id}] succeeded" in line for line in worker.output().splitlines())


def test_submit_runs_to_success_with_output_and_usage(client, auth, tiny_worker):
    response = client.post(
        "/v1/jobs",
        json={"model": "tiny", "messages": [{"role": "user", "content": "What is the capital?"}],
              "temperature": 0, "metadata": {"ticket": "A-17"}},
        headers=auth,
    )  # fmt: skip
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["object"] == "job"

    done = wait_final(client, auth, job["id"])
    assert done["status"] == "succeeded", done
    assert isinstance(done["output"]["text"], str) and done["output"]["finish_reason"] == "length"
    usage = done["usage"]
    assert usage["completion_tokens"] == 8  # the catalog's default_max_tokens for tiny
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    expected = (usage["prompt_tokens"] * Decimal("1.5") + 8 * Decimal("3")) / 1_000_000
    assert Decimal(usage["cost_usd"]) == expected
    timings = done["timings"]
    assert timings["batch_size"] == 1  # alone on the worker
    # A batch of one pays for all of its time: 3.6 $/h is 0.000001 $/ms, and inference_ms is
    # that time cut to the millisecond.
    per_ms = Decimal("3.6") / 3600 / 1000
    gpu_cost = Decimal(usage["gpu_cost_usd"])
    assert gpu_cost > 0
    assert timings["inference_ms"] * per_ms <= gpu_cost < (timings["inference_ms"] + 1) * per_ms
    assert done["attempts"] == 1 and done["metadata"] == {"ticket": "A-17"}
    queued = datetime.fromisoformat(done["started_at"]) - datetime.fromisoformat(done["created_at"])
    assert abs(timings["queue_ms"] - queued.total_seconds() * 1000) <= 1
    assert done["finished_at"] >= done["started_at"]
    rows = ledger_rows(job["id"])
    assert len(rows) == 1 and rows[0].cost_usd == expected


def submit_together(client, auth, bodies: list[dict]) -> list[str]:
    """Jobs that reach the queue together (one bulk submit), so they are there to share a
    batch; jobs submitted one by one may each run at once on an engine that keeps up."""
    jobs = [{"model": "tiny", "temperature": 0, **body} for body in bodies]
    response = client.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()["ids"]


def test_concurrent_jobs_share_one_generate(client, auth, tiny_worker):
    ids = submit_together(
        client, auth, [{"prompt": f"Batch me {i}", "max_tokens": 5} for i in range(6)]
    )
    jobs = [wait_final(client, auth, i) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    sizes = [j["timings"]["batch_size"] for j in jobs]
    assert max(sizes) >= 4, sizes


def test_per_job_max_tokens_and_finish_reason_in_one_batch(client, auth, tiny_worker):
    budgets = [2, 5, 11]
    ids = submit_together(
        client, auth, [{"prompt": "Tell me about queues", "max_tokens": n} for n in budgets]
    )
    jobs = [wait_final(client, auth, i) for i in ids]
    for n, job in zip(budgets, jobs, strict=True):
        assert job["status"] == "succeeded"
        assert job["usage"]["completion_tokens"] == n
        assert job["output"]["finish_reason"] == "length"
    assert max(j["timings"]["batch_size"] for j in jobs) >= 2


def test_stop_sequences_cut_the_text(client, auth, tiny_worker):
    full = wait_final(client, auth, submit(client, auth, prompt="Hello world", max_tokens=20)["id"])
    text = full["output"]["text"]
    start = len(text) // 2
    stop = text[start : start + 2]
    assert stop.strip(), f"tiny model produced no usable stop text: {text!r}"
    cut = wait_final(
        client, auth, submit(client, auth, prompt="Hello world", max_tokens=20, stop=[stop])["id"]
    )
    assert cut["output"]["finish_reason"] == "stop"
    assert cut["output"]["text"] == text[: text.find(stop)]
    assert cut["usage"]["completion_tokens"] < 20


def test_greedy_and_sampled_jobs_run_in_separate_groups(client, auth, tiny_worker):
    greedy = {"model": "tiny", "prompt": "g", "max_tokens": 3, "temperature": 0}
    sampled = {**greedy, "prompt": "s", "temperature": 0.8, "seed": 7}
    # One bulk submit publishes all four at once, so the worker takes them in one batch.
    response = client.post(
        "/v1/jobs/bulk", json={"jobs": [greedy] * 2 + [sampled] * 2}, headers=auth
    )
    assert response.status_code == 202, response.text
    jobs = [wait_final(client, auth, i) for i in response.json()["ids"]]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert len({j["started_at"] for j in jobs}) == 1  # claimed together
    assert [j["timings"]["batch_size"] for j in jobs] == [2, 2, 2, 2]  # but run as two groups


def test_prompt_longer_than_context_fails_alone(client, auth, tiny_worker):
    long_id = submit(client, auth, prompt="word " * 400, max_tokens=4)["id"]
    ok_id = submit(client, auth, prompt="short", max_tokens=4)["id"]
    long_job, ok_job = wait_final(client, auth, long_id), wait_final(client, auth, ok_id)
    assert long_job["status"] == "failed"
    assert long_job["error"]["code"] == "context_length_exceeded"
    assert "context" in long_job["error"]["message"]
    assert ok_job["status"] == "succeeded"
    rows = ledger_rows(long_id)
    assert len(rows) == 1 and rows[0].cost_usd == 0


def test_long_poll_returns_as_soon_as_the_job_ends(client, auth, tiny_worker):
    job = submit(client, auth, prompt="quick", max_tokens=2)
    started = time.monotonic()
    done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth).json()
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded"
    assert elapsed < 10, elapsed


def test_long_poll_times_out_on_a_queued_job(client, auth):
    job = submit(client, auth, model="idle", prompt="nobody serves me")
    started = time.monotonic()
    same = client.get(f"/v1/jobs/{job['id']}", params={"wait": 1}, headers=auth).json()
    assert same["status"] == "queued"
    assert 0.9 <= time.monotonic() - started < 5
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_cancel_of_a_queued_job_means_it_never_runs(client, auth, start_worker):
    job = submit(client, auth, model="idle", prompt="cancel me")
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")

    worker = start_worker("idle")  # its message is still queued: the worker must skip it
    wait_for(lambda: task_ends(worker, job["id"]) == 1, 20, "the worker to take the message")
    final = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert final["status"] == "cancelled" and final["attempts"] == 0 and final["output"] is None
    assert ledger_rows(job["id"]) == []


def test_another_keys_job_is_404(client, auth, other_auth):
    job = submit(client, auth, model="idle", prompt="mine")
    assert client.get(f"/v1/jobs/{job['id']}", headers=other_auth).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other_auth).status_code == 404
    listed = client.get("/v1/jobs", headers=other_auth).json()["data"]
    assert job["id"] not in [j["id"] for j in listed]
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_list_is_newest_first_with_cursor_pages(client, other_auth):
    ids = [submit(client, other_auth, model="idle", prompt=f"p{i}")["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "model": "idle"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params, headers=other_auth).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=other_auth)
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=other_auth).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]


def test_models_show_live_queue(client, auth, tiny_worker, redis_client):
    submit(client, auth, model="idle", prompt="waiting")
    models = {m["id"]: m for m in client.get("/v1/models", headers=auth).json()["data"]}
    assert set(models) >= {"tiny", "idle", "smollm2-135m"}
    assert models["idle"]["live"]["waiting"] == waiting_count(redis_client, "idle", REDIS_PREFIX)
    assert models["idle"]["live"]["waiting"] >= 1
    assert models["tiny"]["live"]["workers"] >= 1
    assert models["tiny"]["pricing"]["input_per_mtok_usd"] == "1.5"


def test_duplicate_delivery_writes_one_result_and_one_ledger_row(client, auth, tiny_worker):
    job = submit(client, auth, prompt="only once", max_tokens=4)
    publish_generate(
        get_celery(), Message(job["id"], "tiny", 0)
    )  # the same message, delivered again
    done = wait_final(client, auth, job["id"])
    publish_generate(get_celery(), Message(job["id"], "tiny", 0))  # and once more after it finished
    wait_for(lambda: task_ends(tiny_worker, job["id"]) == 3, 20, "all three deliveries to end")
    final = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert final["output"] == done["output"] and final["finished_at"] == done["finished_at"]
    assert len(ledger_rows(job["id"])) == 1


def test_high_priority_overtakes_a_queue_of_low_priority(client, auth, start_worker):
    low = [
        submit(client, auth, model="tiny-serial", prompt=f"low {i}", max_tokens=2)["id"]
        for i in range(6)
    ]
    high = submit(client, auth, model="tiny-serial", prompt="urgent", max_tokens=2, priority=9)[
        "id"
    ]
    start_worker("tiny-serial")
    jobs = {i: wait_final(client, auth, i) for i in [*low, high]}
    order = sorted(jobs, key=lambda i: jobs[i]["started_at"])
    assert order[0] == high, [jobs[i]["priority"] for i in order]
    assert order[1:] == low  # the rest in arrival order
