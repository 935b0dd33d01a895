"""Finalizing a batch against real Postgres: once, whoever calls it and however often, even
when a finalizer dies between its two files; expiry cancels what is left."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import redis
import sqlalchemy as sa

from llmq import jobs, outbox
from llmq.announce import Announcer
from llmq.batches import records
from llmq.batches.finalize import error_file_id, finalize_batch, output_file_id
from llmq.batches.sweep import expire_due, finalize_ready
from llmq.batches.validate import CHAT, FileCheck
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.files import file_store
from llmq.files.postgres import PostgresFileStore
from llmq.keys import Caller, create_key
from llmq.models import Batch, File, Job, JobStatus, WebhookDelivery
from llmq.queues import make_celery
from llmq.settings import get_settings
from tests.conftest import REDIS_URL


def announcer() -> Announcer:
    return Announcer(redis.Redis.from_url(REDIS_URL), make_celery(get_settings()), "t")


def make_batch(
    lines: int, model: str = "echo", webhook_url: str | None = None
) -> tuple[str, Caller]:
    """A batch of `lines` good lines and one refused, its jobs queued (nobody publishes them)."""
    with session_scope() as session:
        key, _ = create_key(session, "finalize", webhook_url=webhook_url)
        caller = Caller(key.id, key.name, False)
    raw = [
        json.dumps({"custom_id": f"r{i:03}", "method": "POST", "url": CHAT, "body": {
            "model": model, "messages": [{"role": "user", "content": "a b c"}]}}).encode()
        for i in range(lines)
    ] + [json.dumps({"custom_id": "bad", "method": "POST", "url": CHAT,
                     "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}).encode()]  # fmt: skip
    with session_scope() as session:
        return create(session, caller, raw).id, caller


def create(session, caller: Caller, raw: list[bytes]) -> Batch:
    """The batch of these input lines, as the create route makes it (no budget, no rates)."""
    batch, _ = records.create_batch(
        session, caller, input_file_id="file-x", endpoint=CHAT, completion_window="24h",
        window_s=3600, metadata=None, check=FileCheck(CHAT, get_catalog(), 10_000, 100),
        lines=lambda: raw, to_job=lambda line: line.job,
    )  # fmt: skip
    return batch


def end_jobs(batch_id: str) -> None:
    """What a worker's result writer leaves: every job succeeded, with its text and tokens."""
    with session_scope() as session:
        session.execute(
            sa.update(Job)
            .where(Job.batch_id == batch_id)
            .values(status=JobStatus.SUCCEEDED, output_text="a b", finish_reason="length",
                    prompt_tokens=3, completion_tokens=2, finished_at=sa.func.now())
        )  # fmt: skip


def batch_row(batch_id: str) -> Batch:
    with session_scope() as session:
        row = session.get(Batch, batch_id)
        session.expunge(row)
        return row


def custom_ids(file_id: str) -> list[str]:
    data = b"".join(PostgresFileStore().open(file_id))
    return [json.loads(line)["custom_id"] for line in data.splitlines()]


class DiesAfterFirstFile(PostgresFileStore):
    """A store whose writer dies after the first file is whole."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    def put(self, file_id: str, chunks: Iterable[bytes]) -> int:
        if self.puts == 1:
            raise SystemExit("the finalizer's process dies here")
        self.puts += 1
        return super().put(file_id, chunks)


def test_a_batch_with_active_jobs_is_not_finalized():
    batch_id, _ = make_batch(2)
    assert not finalize_batch(file_store(get_settings()), batch_id, announcer())
    assert batch_row(batch_id).status == "in_progress"


def test_a_finalizer_that_dies_mid_write_is_run_again_and_writes_each_line_once():
    batch_id, _ = make_batch(30)
    end_jobs(batch_id)
    try:
        finalize_batch(DiesAfterFirstFile(), batch_id, announcer())
    except SystemExit:
        pass
    else:
        raise AssertionError("the finalizer should have died")
    assert batch_row(batch_id).status == "finalizing"
    assert batch_id in finalize_ready(file_store(get_settings()), announcer())
    row = batch_row(batch_id)
    assert row.status == "completed" and row.finalizing_at and row.completed_at
    assert row.output_file_id == output_file_id(batch_id)
    assert custom_ids(row.output_file_id) == [f"r{i:03}" for i in range(30)]
    assert custom_ids(row.error_file_id) == ["bad"]
    with session_scope() as session:
        files = session.scalars(sa.select(File.id).where(File.id.like(f"file-{batch_id}-%")))
        assert sorted(files) == sorted([output_file_id(batch_id), error_file_id(batch_id)])
    assert not finalize_batch(file_store(get_settings()), batch_id, announcer())  # ended already


def deliveries(batch_id: str) -> list[tuple[str, str, str]]:
    with session_scope() as session:
        query = sa.select(WebhookDelivery.id, WebhookDelivery.event_type, WebhookDelivery.url)
        return list(session.execute(query.where(WebhookDelivery.batch_id == batch_id)).tuples())


def test_concurrent_finalizers_end_the_batch_once_and_write_one_webhook_event():
    batch_id, _ = make_batch(10, webhook_url="http://127.0.0.1:9/hook")
    end_jobs(batch_id)
    results: list[bool] = []
    store = file_store(get_settings())
    ends = announcer()
    threads = [
        threading.Thread(target=lambda: results.append(finalize_batch(store, batch_id, ends)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert custom_ids(output_file_id(batch_id)) == [f"r{i:03}" for i in range(10)]
    event = [(f"msg_{batch_id}", "batch.completed", "http://127.0.0.1:9/hook")]
    assert deliveries(batch_id) == event
    assert batch_id not in finalize_ready(store, ends)
    assert not finalize_batch(store, batch_id, ends)  # a rerun writes no second event
    assert deliveries(batch_id) == event


def test_a_batch_of_a_key_without_a_webhook_url_writes_no_event():
    batch_id, _ = make_batch(1)
    end_jobs(batch_id)
    assert finalize_batch(file_store(get_settings()), batch_id, announcer())
    assert deliveries(batch_id) == []


def test_a_broken_file_fails_the_batch_with_its_webhook_event_in_the_same_transaction():
    with session_scope() as session:
        key, _ = create_key(session, "failed", webhook_url="http://127.0.0.1:9/hook")
        caller = Caller(key.id, key.name, False)
    with session_scope() as session:
        batch_id = create(session, caller, [b"not json"]).id
        assert outbox.created_in(session) == [f"msg_{batch_id}"]
    assert [d[1] for d in deliveries(batch_id)] == ["batch.failed"]


def test_a_batch_past_its_window_expires_with_its_unrun_lines_in_the_error_file():
    batch_id, _ = make_batch(3, model="echo-long", webhook_url="http://127.0.0.1:9/hook")
    with session_scope() as session:
        session.execute(
            sa.update(Batch).where(Batch.id == batch_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )  # fmt: skip
    settings = get_settings()
    assert batch_id in expire_due(announcer())
    assert batch_id in finalize_ready(file_store(settings), announcer())
    row = batch_row(batch_id)
    assert row.status == "expired" and row.expired_at and row.output_file_id is None
    data = b"".join(PostgresFileStore().open(row.error_file_id))
    codes = {json.loads(line)["custom_id"]: json.loads(line)["error"]["code"]
             for line in data.splitlines()}  # fmt: skip
    assert codes == {"bad": "model_not_found", "r000": "batch_expired", "r001": "batch_expired",
                     "r002": "batch_expired"}  # fmt: skip
    assert [d[1] for d in deliveries(batch_id)] == ["batch.expired"]


def test_jobs_past_their_deadline_end_an_expired_batch_whoever_expired_them():
    """A batch's jobs share its deadline: the job sweeper may expire them first."""
    batch_id, _ = make_batch(2)
    with session_scope() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(sa.update(Batch).where(Batch.id == batch_id).values(expires_at=past))
        session.execute(sa.update(Job).where(Job.batch_id == batch_id).values(expires_at=past))
        assert len(jobs.expire_queued(session)) >= 2
    assert finalize_batch(file_store(get_settings()), batch_id, announcer())
    row = batch_row(batch_id)
    assert row.status == "expired" and row.expired_at
    data = b"".join(PostgresFileStore().open(row.error_file_id))
    codes = {json.loads(line)["custom_id"]: json.loads(line)["error"]["code"]
             for line in data.splitlines()}  # fmt: skip
    assert codes == {"bad": "model_not_found", "r000": "batch_expired", "r001": "batch_expired"}
