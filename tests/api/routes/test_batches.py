"""/v1/batches through the official `openai` client against a live API process and a real
echo worker; the feeder's rounds publish the lines from the backlog and the sweeper's pass
finalizes, as the leader's would."""

from __future__ import annotations

import json
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import openai
import pytest
import redis
import sqlalchemy as sa
from standardwebhooks import Webhook

from llmq import events
from llmq.announce import Announcer
from llmq.batches.finalize import finalize_batch
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.files import file_store
from llmq.keys import Limits, create_key, webhook_secret
from llmq.models import ApiKey, Batch, Job, LedgerEntry, WebhookDelivery
from llmq.pools import backlogs
from llmq.queues import make_celery, waiting_count
from llmq.settings import get_settings
from scheduler.feeder import Feeder
from scheduler.sweeper import Sweeper
from tests.api.routes import test_chat
from tests.conftest import REDIS_PREFIX, REDIS_URL, make_key, wait_for
from tests.tenancy_helpers import Receiver, WebhookWorker

CHAT = "/v1/chat/completions"
api, echo_worker, sdk = test_chat.api, test_chat.echo_worker, test_chat.sdk  # the same fixtures


def sweeper(**overrides) -> Sweeper:
    settings = get_settings().model_copy(update=overrides)
    return Sweeper(settings, redis.Redis.from_url(REDIS_URL), make_celery(settings))


def feed() -> None:
    """One round of the leader's feeder: batch lines wait in the backlog until it runs."""
    settings = get_settings()
    client = redis.Redis.from_url(REDIS_URL)
    queues = backlogs(client, REDIS_PREFIX, get_catalog().names())
    Feeder(settings, get_catalog(), client, make_celery(settings)).feed(queues, bound_ttl_s=1)


def announcer() -> Announcer:
    settings = get_settings()
    return Announcer.for_settings(settings, redis.Redis.from_url(REDIS_URL), make_celery(settings))


def request(custom_id: str, url: str = CHAT, **body) -> dict:
    body = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}],
            "max_tokens": 2} | body  # fmt: skip
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def upload(client: openai.OpenAI, items: list[dict | str]) -> str:
    data = "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items)
    return client.files.create(file=("in.jsonl", data.encode()), purpose="batch").id


def until_status(
    client: openai.OpenAI, batch_id: str, *statuses: str, timeout_s: float = 60, **sweeper_settings
):
    def ended():
        feed()
        sweeper(**sweeper_settings).sweep()
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_for(ended, timeout_s, f"batch {batch_id} {statuses}", interval_s=0.2)


def lines(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_a_batch_of_good_and_bad_lines_completes_with_both_files(api, echo_worker):
    key = make_key("batch")
    client = sdk(api, key)
    good = [request(f"g{i}") for i in range(5)]
    bad = [request("unknown", model="nope"), request("tools", tools=[{"type": "function"}])]
    file_id = upload(client, [*good, *bad])
    batch = client.batches.create(
        input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={"run": "1"}
    )
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert batch.status == "in_progress" and batch.metadata == {"run": "1"}
    assert batch.request_counts.total == 7
    done = until_status(client, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"g{i}" for i in range(5)]
    first = out[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "one two"
    errors = {e["custom_id"]: e for e in lines(client, done.error_file_id)}
    assert errors["unknown"]["error"]["code"] == "model_not_found"
    assert errors["unknown"]["response"]["status_code"] == 404
    assert errors["tools"]["response"]["body"]["error"]["param"] == "tools"
    with session_scope() as session:
        job_ids = session.scalars(sa.select(Job.id).where(Job.batch_id == batch.id)).all()
        deadlines = session.scalars(sa.select(Job.expires_at).where(Job.batch_id == batch.id))
        assert all(abs(d.timestamp() - batch.expires_at) < 5 for d in deadlines)
        ledger = session.scalar(sa.select(sa.func.count()).where(LedgerEntry.job_id.in_(job_ids)))
    assert len(job_ids) == 5 and ledger == 5
    assert no_streams(job_ids)  # nobody watches a line's tokens: Redis keeps nothing of them
    assert done.usage.input_tokens == 15 and done.usage.output_tokens == 10
    assert [b.id for b in client.batches.list(limit=1)][:1] == [batch.id]
    with pytest.raises(openai.NotFoundError):
        sdk(api, make_key("other")).batches.retrieve(batch.id)


def test_a_worker_takes_batch_lines_only_when_no_interactive_job_waits(api, start_worker):
    """Batch lines wait in the backlog, then on their model's batch lane: interactive jobs
    submitted after them, at the lowest interactive priority, still run first."""
    key = make_key("lanes")
    client = sdk(api, key)
    file_id = upload(client, [request(f"b{i}", model="echo-lanes") for i in range(6)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "echo-lanes", "prompt": "now", "max_tokens": 1, "priority": 0}
    interactive = [
        httpx.post(f"{api.url}/v1/jobs", json=body, headers=headers, timeout=10).json()["id"]
        for _ in range(3)
    ]
    feed()  # interactive jobs first: a batch line goes out only once none is left
    with session_scope() as session:
        lines_out = session.scalar(
            sa.select(sa.func.count()).where(Job.batch_id == batch.id, ~Job.in_backlog)
        )
    assert lines_out == 0
    assert waiting_count(redis.Redis.from_url(REDIS_URL), "echo-lanes", REDIS_PREFIX) >= 1

    start_worker("echo-lanes")
    until_status(client, batch.id, "completed")
    with session_scope() as session:
        started = dict(
            session.execute(
                sa.select(Job.id, Job.started_at).where(Job.model == "echo-lanes")
            ).all()
        )
    batch_lines = [t for i, t in started.items() if str(i) not in interactive]
    assert len(batch_lines) == 6
    assert max(started[uuid.UUID(i)] for i in interactive) < min(batch_lines)


def test_a_broken_file_fails_the_batch_with_line_numbered_errors(api):
    client = sdk(api, make_key("broken"))
    file_id = upload(client, [request("a"), "not json", request("a"), request("b", url="/v1/x")])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_url"),
    ]  # fmt: skip
    with session_scope() as session:
        assert not session.scalar(sa.select(sa.func.count()).where(Job.batch_id == batch.id))
    second = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    assert [b.id for b in page] == [second.id, batch.id]  # the client follows `after`


def test_a_cancelled_batch_writes_its_unrun_lines_to_the_error_file(api):
    """No worker serves the model, so every job is still queued when the cancel comes."""
    client = sdk(api, make_key("cancel"))
    file_id = upload(client, [request(f"c{i}", model="tiny-serial") for i in range(3)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelling_at and cancelled.cancelled_at
    assert cancelled.output_file_id is None
    errors = lines(client, cancelled.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["c0", "c1", "c2"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with session_scope() as session:
        assert no_streams(session.scalars(sa.select(Job.id).where(Job.batch_id == batch.id)))
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def no_streams(job_ids) -> bool:
    """Whether none of these jobs has a Redis stream of its text or its end."""
    keys = [events.stream_key(REDIS_PREFIX, str(job_id)) for job_id in job_ids]
    return redis.Redis.from_url(REDIS_URL).exists(*keys) == 0


def test_the_budget_is_checked_for_the_whole_batch(api):
    with session_scope() as session:
        key = create_key(
            session, f"b-{uuid.uuid4().hex[:6]}",
            limits=Limits(budget_usd=Decimal("0.0001"), budget_period="day"),
        )[1]  # fmt: skip
    client = sdk(api, key)
    file_id = upload(
        client, [request(f"p{i}", model="echo-priced", max_tokens=64) for i in range(3)]
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert raised.value.status_code == 402
    assert "these 3 jobs may cost" in raised.value.message


def test_the_webhook_worker_finalizes_a_batch_when_its_last_job_ends(api, echo_worker):
    sender = WebhookWorker().wait_ready()
    try:
        client = sdk(api, make_key("prompt"))
        file_id = upload(client, [request(f"q{i}") for i in range(3)])
        batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        done = wait_for(  # no sweeper runs here; the feeder publishes the lines
            lambda: feed() or ((b := client.batches.retrieve(batch.id)).status == "completed" and b),
            60, "batch completed", process=sender, interval_s=0.1,
        )  # fmt: skip
    finally:
        sender.stop()
    assert sorted(o["custom_id"] for o in lines(client, done.output_file_id)) == ["q0", "q1", "q2"]


def test_a_worker_killed_mid_batch_still_gives_one_output_line_and_ledger_row_per_line(
    api, start_worker
):
    """The batch's first jobs are running when their worker is SIGKILLed: their leases lapse,
    the sweeper puts them back, another worker runs them, and the batch ends once."""
    model = "pool-kill"  # echo, 4 jobs a batch, 4 s each; only the workers started here
    client = sdk(api, make_key("killed"))
    file_id = upload(client, [request(f"k{i}", model=model) for i in range(6)])
    victim = start_worker(model)
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

    def statuses() -> list[str]:
        with session_scope() as session:
            return list(session.scalars(sa.select(Job.status).where(Job.batch_id == batch.id)))

    wait_for(lambda: feed() or "running" in statuses(), 60, "the batch's first jobs to run")
    os.killpg(victim.proc.pid, signal.SIGKILL)
    start_worker(model, wait=False)
    # A message the victim took but had not claimed (a loaded machine splits its batches) is
    # published again once held this long; the default minute is another test's subject.
    done = until_status(client, batch.id, "completed", held_message_timeout_s=10)
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    out = lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"k{i}" for i in range(6)]
    rows = attempts_and_charges(batch.id)
    assert len(rows) == 6 and all(n == 1 for _, n in rows)
    assert max(attempts for attempts, _ in rows) == 2  # some ran twice, and were charged once


def attempts_and_charges(batch_id: str) -> list[tuple[int, int]]:
    """(claims, ledger rows) of each of the batch's jobs that has a ledger row."""
    with session_scope() as session:
        return [tuple(row) for row in session.execute(
            sa.select(Job.attempts, sa.func.count(LedgerEntry.id))
            .join(LedgerEntry, LedgerEntry.job_id == Job.id)
            .where(Job.batch_id == batch_id)
            .group_by(Job.id)
        )]  # fmt: skip


def hooked_key(url: str | None) -> tuple[str, str]:
    """A key with a default webhook URL (or none): its plain key and its signing secret."""
    with session_scope() as session:
        row, plain = create_key(session, f"hook-{uuid.uuid4().hex[:6]}", webhook_url=url)
        return plain, webhook_secret(row)


def batch_deliveries(batch_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        query = sa.select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
        return list(session.scalars(query))


def job_deliveries(batch_id: str) -> list[WebhookDelivery]:
    """Outbox rows of the batch's jobs: none, since the batch's one event stands for them."""
    with session_scope() as session:
        jobs = sa.select(Job.id).where(Job.batch_id == batch_id)
        query = sa.select(WebhookDelivery).where(WebhookDelivery.job_id.in_(jobs))
        return list(session.scalars(query))


@pytest.fixture
def sender(environment):
    worker = WebhookWorker({"LLMQ_WEBHOOK_SWEEP_S": "0.3"}).wait_ready()
    yield worker
    worker.stop()


def test_a_batch_that_ends_sends_one_signed_event_to_its_keys_url(api, echo_worker, sender):
    receiver = Receiver()
    try:
        key, secret = hooked_key(receiver.url)
        client, silent = sdk(api, key), sdk(api, hooked_key(None)[0])
        done = [
            c.batches.create(input_file_id=upload(c, [request("a"), request("b")]),
                             endpoint=CHAT, completion_window="24h")
            for c in (client, silent)
        ]  # fmt: skip
        for c, batch in zip((client, silent), done, strict=True):
            until_status(c, batch.id, "completed")
        wait_for(
            lambda: [d.status for d in batch_deliveries(done[0].id)] == ["delivered"],
            60, "the batch's event delivered", process=sender,
        )  # fmt: skip
        assert finalize_batch(file_store(get_settings()), done[0].id, announcer()) is False
        sweeper().sweep()  # a rerun finalizer writes no second event
        received = receiver.wait_for(1)
    finally:
        receiver.close()
    types = [json.loads(r.body)["type"] for r in received]
    assert types == ["batch.completed"]
    assert job_deliveries(done[0].id) == []  # no job.* event per line
    got = [r for r in received if b'"batch.' in r.body]
    assert len(got) == 1 and got[0].path == "/hook"
    event = Webhook(secret).verify(got[0].body, got[0].headers)
    assert event == {
        "id": f"msg_{done[0].id}", "object": "event", "type": "batch.completed",
        "created_at": event["created_at"], "data": {"id": done[0].id},
    }  # fmt: skip
    assert got[0].headers["webhook-id"] == event["id"]
    assert abs(event["created_at"] - done[0].created_at) < 120
    assert [(d.attempts, d.event_type) for d in batch_deliveries(done[0].id)] == [
        (1, "batch.completed")
    ]
    assert batch_deliveries(done[1].id) == []  # its key has no webhook URL


def test_cancelled_and_failed_batches_send_their_events(api, sender):
    """No worker serves `tiny-serial`: the cancel ends every job while queued."""
    receiver = Receiver()
    try:
        key, secret = hooked_key(receiver.url)
        client = sdk(api, key)
        file_id = upload(client, [request("c0", model="tiny-serial")])
        batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        assert client.batches.cancel(batch.id).status == "cancelled"
        broken = upload(client, ["not json"])
        failed = client.batches.create(input_file_id=broken, endpoint=CHAT, completion_window="24h")
        assert failed.status == "failed"
        got = receiver.wait_for(2)
    finally:
        receiver.close()
    events = {e["data"]["id"]: e["type"] for e in
              (Webhook(secret).verify(r.body, r.headers) for r in got)}  # fmt: skip
    assert sorted(events.values()) == ["batch.cancelled", "batch.failed"]
    assert job_deliveries(batch.id) == []  # the cancelled job sends no job.cancelled
    assert (events[batch.id], events[failed.id]) == ("batch.cancelled", "batch.failed")


def key_with(**limits) -> tuple[ApiKey, str]:
    with session_scope() as session:
        return create_key(session, f"b-{uuid.uuid4().hex[:6]}", limits=Limits(**limits))


def batch_ids_of(key_id: uuid.UUID) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(sa.select(Batch.id).where(Batch.api_key_id == key_id)))


def test_an_idempotency_key_answers_a_retried_create_with_the_same_batch(api):
    row, key = key_with()
    client = sdk(api, key)
    file_id = upload(client, [request(f"i{i}", model="parked") for i in range(3)])
    args = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    idem = {"Idempotency-Key": "batch-1"}
    first = client.batches.with_raw_response.create(**args, extra_headers=idem)
    assert "idempotent-replayed" not in first.headers
    client.files.delete(file_id)  # a retry still finds its batch
    again = client.batches.with_raw_response.create(**args, extra_headers=idem)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parse().id == first.parse().id and batch_ids_of(row.id) == [first.parse().id]
    with session_scope() as session:
        jobs = session.scalar(sa.select(sa.func.count()).where(Job.batch_id == first.parse().id))
    assert jobs == 3
    # OpenAI's routes answer llmq's 422 with 400, the client's BadRequestError.
    with pytest.raises(openai.BadRequestError) as reused:
        client.batches.create(**args, metadata={"other": "body"}, extra_headers=idem)
    assert reused.value.code == "idempotency_key_reused"
    assert reused.value.body["param"] == "Idempotency-Key"
    with pytest.raises(openai.BadRequestError):  # a batch's key is not a chat completion's
        client.chat.completions.create(model="echo", messages=test_chat.HELLO, extra_headers=idem)
    assert batch_ids_of(row.id) == [first.parse().id]


def test_twin_creates_make_one_batch_charged_once(api):
    """Eight identical creates at once, on a key whose budget holds the batch once and whose
    rpm allows one request: every one answers with the one batch. No worker serves
    `echo-priced` here: the jobs stay queued, their worst-case cost reserved."""
    probe = sdk(api, make_key("probe"))
    items = [request(f"t{i}", model="echo-priced", max_tokens=64) for i in range(3)]
    probed = probe.batches.create(
        input_file_id=upload(probe, items), endpoint=CHAT, completion_window="24h"
    )
    with session_scope() as session:
        query = sa.select(sa.func.sum(Job.reserved_cost_usd)).where(Job.batch_id == probed.id)
        cost = session.scalar(query)
    row, key = key_with(budget_usd=cost * 3 / 2, budget_period="day", rpm=1)
    client = sdk(api, key)
    file_id = upload(client, items)

    def create(_):
        return client.batches.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h",
            extra_headers={"Idempotency-Key": "twins"},
        ).id  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(create, range(8)))
    assert ids == set(batch_ids_of(row.id)) and len(ids) == 1
    with session_scope() as session:
        query = sa.select(sa.func.sum(Job.reserved_cost_usd)).where(Job.api_key_id == row.id)
        assert session.scalar(query) == cost


def test_a_create_counts_against_the_keys_rpm(api):
    row, key = key_with(rpm=1)
    client = sdk(api, key)
    file_id = upload(client, [request("r0", model="parked")])
    client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.RateLimitError) as limited:
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.body["type"] and "rpm" in limited.value.message
    assert len(batch_ids_of(row.id)) == 1


def test_a_batchs_lines_are_exempt_from_the_keys_tpm_and_concurrency(api, echo_worker):
    """Its lines are not charged to the key's per-minute tokens nor counted in flight: the
    key's own requests still run while the batch's jobs wait on the queue."""
    _, key = key_with(tpm=200, max_concurrent=1)
    client = sdk(api, key)
    items = [request(f"x{i}", model="parked", max_tokens=64) for i in range(5)]
    batch = client.batches.create(
        input_file_id=upload(client, items), endpoint=CHAT, completion_window="24h"
    )
    assert batch.request_counts.total == 5 and batch.status == "in_progress"
    answer = client.chat.completions.create(model="echo", messages=test_chat.HELLO, max_tokens=2)
    assert answer.choices[0].message.content == "the quick"
    client.batches.cancel(batch.id)
