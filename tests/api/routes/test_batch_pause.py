"""llmq's batch extensions against a live API process and real echo workers: pause and
resume, the progress fields and events stream, and the batch price factor."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import httpx
import redis
import sqlalchemy as sa

from llmq import job_queries
from llmq.db import session_scope
from llmq.models import Batch, Job, LedgerEntry
from llmq.queues import make_celery, waiting_count
from llmq.settings import get_settings
from scheduler.sweeper import Sweeper
from tests.api.routes import test_batches
from tests.api.routes.test_batches import (
    CHAT,
    attempts_and_charges,
    feed,
    lines,
    request,
    sdk,
    until_status,
    upload,
)
from tests.conftest import REDIS_PREFIX, REDIS_URL, make_key, wait_for

api, echo_worker = test_batches.api, test_batches.echo_worker  # the same fixtures
MODEL = "echo-pause"  # two lines a batch slot, 0.7 s each


def post(api, key: str, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{api.url}{path}", headers=headers, timeout=10)


def statuses(batch_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count())
            .where(Job.batch_id == batch_id)
            .group_by(Job.status)
        ).all()
    return {status: n for status, n in rows}


def waiting() -> int:
    return waiting_count(redis.Redis.from_url(REDIS_URL), MODEL, REDIS_PREFIX)


def test_pause_stops_new_lines_and_resume_runs_each_line_once(api, start_worker):
    key = make_key("pause")
    client = sdk(api, key)
    file_id = upload(client, [request(f"p{i}", model=MODEL) for i in range(12)])
    worker = start_worker(MODEL)
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    wait_for(
        lambda: feed() or statuses(batch.id).get("succeeded", 0) >= 2, 60, "the first lines to end"
    )

    paused = post(api, key, f"/v1/batches/{batch.id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and paused.json()["paused_at"]
    assert paused.json()["status"] == "in_progress"
    again = post(api, key, f"/v1/batches/{batch.id}/pause")
    assert again.status_code == 409 and again.json()["error"]["type"] == "invalid_request_error"

    # The running lines finish; the worker drops the lane's messages unclaimed.
    wait_for(lambda: waiting() == 0 and not statuses(batch.id).get("running"), 60, "drained")
    with session_scope() as session:
        paused_at = session.scalar(sa.select(Batch.paused_at).where(Batch.id == batch.id))
        started_after = session.scalar(
            sa.select(sa.func.count()).where(Job.batch_id == batch.id, Job.started_at > paused_at)
        )
    assert started_after <= 2  # at most one batch slot that was forming as it paused
    queued = statuses(batch.id).get("queued", 0)
    assert queued > 0

    # The sweeper does not count the paused lines as lost.
    eager = get_settings().model_copy(update={"republish_after_s": 0})
    report = Sweeper(eager, redis.Redis.from_url(REDIS_URL), make_celery(eager)).sweep()
    with session_scope() as session:
        ids = {str(i) for i in session.scalars(sa.select(Job.id).where(Job.batch_id == batch.id))}
        assert not job_queries.stale_queued(session, timedelta(0), [MODEL])
        assert job_queries.activity_by_model(session, [MODEL])[MODEL].oldest_queued_s is None
    assert not ids & set(report.republished)
    assert waiting() == 0 and statuses(batch.id).get("queued") == queued
    assert client.batches.retrieve(batch.id).status == "in_progress"  # not finalized

    worker.stop()
    resumed = post(api, key, f"/v1/batches/{batch.id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["paused"] is False and resumed.json()["paused_at"] is None
    with session_scope() as session:  # every queued line back in the backlog, for the feeder
        backlog = session.scalar(
            sa.select(sa.func.count()).where(Job.batch_id == batch.id, Job.in_backlog)
        )
    assert backlog == queued and waiting() == 0
    assert post(api, key, f"/v1/batches/{batch.id}/resume").status_code == 409

    start_worker(MODEL, wait=False)
    done = until_status(client, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
    out = [o["custom_id"] for o in lines(client, done.output_file_id)]
    assert sorted(out) == sorted(f"p{i}" for i in range(12))  # each exactly once
    rows = attempts_and_charges(batch.id)
    assert len(rows) == 12 and all(attempts == 1 and n == 1 for attempts, n in rows)
    assert post(api, key, f"/v1/batches/{batch.id}/pause").status_code == 409  # ended


def test_a_paused_batch_still_expires(api):
    """No worker serves `parked`: the lines stay queued, paused, until the window ends."""
    key = make_key("pause-expiry")
    client = sdk(api, key)
    file_id = upload(client, [request(f"e{i}", model="parked") for i in range(2)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert post(api, key, f"/v1/batches/{batch.id}/pause").status_code == 200
    assert post(api, make_key("other"), f"/v1/batches/{batch.id}/resume").status_code == 404
    with session_scope() as session:
        session.execute(
            sa.update(Batch).where(Batch.id == batch.id).values(expires_at=sa.func.now())
        )
    expired = until_status(client, batch.id, "expired")
    assert expired.request_counts.failed == 2
    errors = lines(client, expired.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert post(api, key, f"/v1/batches/{batch.id}/resume").status_code == 409


def read_events(api, key: str, batch_id: str, into: list[tuple[str, dict]]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{api.url}/v1/batches/{batch_id}/events"
    with httpx.stream("GET", url, headers=headers, timeout=60) as answer:
        event, data = "message", []
        for line in answer.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                into.append((event, json.loads("\n".join(data))))
                event, data = "message", []


def test_the_events_stream_sends_progress_then_the_final_batch(api, start_worker):
    key = make_key("events")
    client = sdk(api, key)
    file_id = upload(client, [request(f"s{i}", model=MODEL) for i in range(8)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    got: list[tuple[str, dict]] = []
    reader = threading.Thread(target=read_events, args=(api, key, batch.id, got), daemon=True)
    reader.start()
    wait_for(lambda: got, 30, "the first event")
    first = got[0][1]["llmq_progress"]
    assert first == {"done": 0, "failed": 0, "total": 8, "queued": 8, "running": 0,
                     "tokens_per_s": None, "eta_s": None}  # fmt: skip
    start_worker(MODEL)
    until_status(client, batch.id, "completed")
    reader.join(30)
    assert not reader.is_alive()  # the stream closed after the final event
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "batch" and set(kinds[:-1]) == {"progress"}
    assert got[-1][1]["status"] == "completed"
    done = [data["llmq_progress"]["done"] for _, data in got]
    assert done == sorted(done) and done[-1] == 8 and len(set(done)) > 2
    measured = [data["llmq_progress"] for _, data in got[:-1] if data["llmq_progress"]["done"]]
    assert measured and all(p["eta_s"] is not None and p["tokens_per_s"] > 0 for p in measured)


def test_the_events_stream_of_another_keys_batch_is_not_found(api):
    client = sdk(api, make_key("events-owner"))
    batch = client.batches.create(
        input_file_id=upload(client, [request("x", model="parked")]),
        endpoint=CHAT, completion_window="24h",
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {make_key('events-other')}"}
    answer = httpx.get(f"{api.url}/v1/batches/{batch.id}/events", headers=headers, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "invalid_request_error"
    client.batches.cancel(batch.id)


def test_the_batch_price_factor_halves_a_lines_ledger_cost(api, start_worker):
    model = "echo-batch-priced"
    key = make_key("batch-price")
    client = sdk(api, key)
    start_worker(model)
    body = {"model": model, "messages": [{"role": "user", "content": "one two three"}],
            "max_tokens": 2}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    answer = httpx.post(f"{api.url}/v1/jobs", json=body, headers=headers, timeout=10)
    job_id = uuid.UUID(answer.json()["id"])
    file_id = upload(client, [{"custom_id": "a", "method": "POST", "url": CHAT, "body": body}])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    until_status(client, batch.id, "completed")
    with session_scope() as session:
        wait_for(lambda: job_queries.costs(session, [job_id]), 30, "the job's ledger row")
        line_id = session.scalar(sa.select(Job.id).where(Job.batch_id == batch.id))
        costs = job_queries.costs(session, [line_id, job_id])
        reserved = dict(
            session.execute(
                sa.select(Job.id, Job.reserved_cost_usd).where(Job.id.in_([line_id, job_id]))
            ).all()
        )
        tokens = session.execute(
            sa.select(LedgerEntry.prompt_tokens, LedgerEntry.completion_tokens)
            .where(LedgerEntry.job_id.in_([line_id, job_id]))
        ).all()  # fmt: skip
    assert len(set(tokens)) == 1  # the same tokens, at two prices
    line_cost, job_cost = costs[line_id][0], costs[job_id][0]
    assert job_cost > 0 and line_cost * 2 == job_cost
    assert reserved[line_id] * 2 == reserved[job_id]


def test_pause_and_resume_of_a_missing_batch_are_not_found(api):
    key = make_key("pause-missing")
    for action in ("pause", "resume"):
        answer = post(api, key, f"/v1/batches/batch_nope/{action}")
        assert answer.status_code == 404 and answer.json()["error"]["type"]


def test_a_broken_batch_cannot_be_paused(api):
    key = make_key("pause-failed")
    client = sdk(api, key)
    failed = client.batches.create(
        input_file_id=upload(client, ["not json"]), endpoint=CHAT, completion_window="24h"
    )
    assert failed.status == "failed"
    answer = post(api, key, f"/v1/batches/{failed.id}/pause")
    assert answer.status_code == 409 and "failed" in answer.json()["error"]["message"]
