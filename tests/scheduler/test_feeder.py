"""The backlog and its feeder with real Postgres, Redis, echo workers and scheduler processes:
what the feeder publishes and in which order, what a crash mid-feed leaves, that the sweeper
leaves backlog jobs alone, that interactive jobs pass a large batch, and fair share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
import sqlalchemy as sa

from llmq import jobs
from llmq.batches.records import new_batch_id
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Batch, Job, LedgerEntry, ScalingEvent
from llmq.queues import bound_key, make_celery, publish_generate_many, waiting_count
from llmq.settings import get_settings
from scheduler.feeder import Feeder
from scheduler.sweeper import Sweeper
from tests.api.routes import test_chat
from tests.conftest import REDIS_PREFIX, REDIS_URL, make_key, wait_final, wait_for

api = test_chat.api  # a live API process, for the batch a scheduler feeds
MODELS = ["backlog-feed", "backlog-deadline", "backlog-sweep", "backlog-hold", "backlog-kill",
          "pool-fair", "pool-slot"]  # fmt: skip


@pytest.fixture(autouse=True)
def no_backlog_left():
    """What a test leaves queued is ended, so no later scheduler of every pool starts a
    worker for it."""
    yield
    with session_scope() as session:
        session.execute(
            sa.update(Job)
            .where(Job.model.in_(MODELS), Job.status == "queued")
            .values(status="cancelled", finished_at=sa.func.now())
        )


def new_key(name: str, weight: float = 1.0) -> tuple[uuid.UUID, str]:
    with session_scope() as session:
        row, plain = create_key(session, f"{name}-{uuid.uuid4().hex[:6]}", fair_share_weight=weight)
        return row.id, plain


def backlogged(
    key_id: uuid.UUID,
    model: str,
    n: int,
    expires_in: timedelta = timedelta(hours=24),
    batch_id: str | None = None,
) -> list[uuid.UUID]:
    """`n` queued jobs of the key in the model's backlog, as a batch create leaves them."""
    expires_at = datetime.now(UTC) + expires_in
    new = [
        jobs.NewJob(model, {"max_tokens": 2}, f"line {i}", expires_at=expires_at,
                    batch_id=batch_id, in_backlog=True)
        for i in range(n)
    ]  # fmt: skip
    with session_scope() as session:
        return jobs.create_jobs(session, key_id, new)


def batch_row(key_id: uuid.UUID, expires_in: timedelta) -> str:
    with session_scope() as session:
        batch = Batch(
            id=new_batch_id(), api_key_id=key_id, endpoint="/v1/chat/completions",
            input_file_id="file-test", completion_window="24h", status="in_progress",
            expires_at=datetime.now(UTC) + expires_in,
        )  # fmt: skip
        session.add(batch)
        return batch.id


def feeder() -> Feeder:
    settings = get_settings()
    return Feeder(settings, get_catalog(), redis.Redis.from_url(REDIS_URL), make_celery(settings))


def published(model: str) -> dict[uuid.UUID, int]:
    """Jobs of the model out of the backlog, per key."""
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.api_key_id, sa.func.count())
            .where(Job.model == model, ~Job.in_backlog)
            .group_by(Job.api_key_id)
        ).all()
    return dict(rows)


def test_the_feeder_splits_a_backlog_by_weight_and_leaves_the_rest_in_postgres(redis_client):
    model = "backlog-feed"
    a, _ = new_key("heavy", weight=2)
    b, _ = new_key("light", weight=1)
    backlogged(a, model, 300)
    backlogged(b, model, 300)
    feed = feeder()
    for _ in range(30):  # 30 rounds with room for 9, as a shallow queue would give
        assert feed.feed_model(model, 9) == 9
    assert published(model) == {a: 180, b: 90}
    assert waiting_count(redis_client, model, REDIS_PREFIX) == 270  # the rest holds no message
    with session_scope() as session:
        unstamped = session.scalar(
            sa.select(sa.func.count()).where(
                Job.model == model, ~Job.in_backlog, Job.published_at.is_(None)
            )
        )
    assert unstamped == 0


def test_a_batch_with_a_short_deadline_overtakes_an_earlier_batch_with_a_long_one(redis_client):
    model = "backlog-deadline"
    key_id, _ = new_key("deadlines")
    early_long = batch_row(key_id, timedelta(hours=24))
    backlogged(key_id, model, 10, timedelta(hours=24), early_long)
    late_short = batch_row(key_id, timedelta(hours=1))
    short_ids = backlogged(key_id, model, 10, timedelta(hours=1), late_short)
    assert feeder().feed_model(model, 10) == 10
    with session_scope() as session:
        fed = set(session.scalars(sa.select(Job.id).where(Job.model == model, ~Job.in_backlog)))
    assert fed == set(short_ids)
    lane = f"{REDIS_PREFIX}llmq.batch.{model}:9"  # batch lines wait on the batch lane
    assert redis_client.llen(lane) == 10


def test_the_sweeper_does_not_republish_backlog_jobs():
    model = "backlog-sweep"
    key_id, _ = new_key("sweep")
    held = backlogged(key_id, model, 3)
    with session_scope() as session:  # a job out of the backlog whose message was lost
        lost = jobs.create_job(session, key_id, jobs.NewJob(model, {"max_tokens": 2}, "hi")).id
    settings = get_settings().model_copy(update={"republish_after_s": 0})
    sweeper = Sweeper(settings, redis.Redis.from_url(REDIS_URL), make_celery(settings), [model])
    assert sweeper.sweep().republished == [str(lost)]
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.in_backlog, Job.published_at).where(Job.id.in_(held))
        ).all()
    assert rows == [(True, None)] * 3


def test_an_interactive_submit_goes_to_the_backlog_only_when_the_queue_is_full(
    client, auth, redis_client
):
    model = "backlog-hold"
    redis_client.set(bound_key(REDIS_PREFIX, model), 2, ex=60)  # as a leader's feeder writes it
    body = {"jobs": [{"model": model, "prompt": "hi", "max_tokens": 1}] * 5}
    response = client.post("/v1/jobs/bulk", json=body, headers=auth)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    with session_scope() as session:
        query = sa.select(Job.id, Job.in_backlog).where(Job.model == model)
        held = dict(session.execute(query).all())
    assert [held[uuid.UUID(i)] for i in ids] == [False, False, True, True, True]
    assert waiting_count(redis_client, model, REDIS_PREFIX) == 2
    live = client.get(f"/v1/models/{model}", headers=auth).json()["live"]
    assert (live["waiting"], live["backlog"]) == (2, 3)
    single = client.post("/v1/jobs", json=body["jobs"][0], headers=auth)
    assert single.status_code == 202 and single.json()["status"] == "queued"
    # No leader refreshes the bound: every submit is published at once, as without a backlog.
    redis_client.delete(bound_key(REDIS_PREFIX, model))
    client.post("/v1/jobs", json=body["jobs"][0], headers=auth)
    assert waiting_count(redis_client, model, REDIS_PREFIX) == 3


def test_a_key_past_its_share_waits_in_the_backlog_though_the_queue_has_room(client, redis_client):
    """The feeder left some of A's interactive jobs in the backlog: A's next submit joins
    them there; B's goes straight to the queue."""
    model = "backlog-hold"
    a, a_plain = new_key("over-share")
    _, b_plain = new_key("within-share")
    backlogged(a, model, 30)
    redis_client.set(bound_key(REDIS_PREFIX, model), 100, ex=60)
    assert feeder().feed_model(model, 9, held_ttl_s=60) == 9
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    ids = {}
    for name, plain in (("a", a_plain), ("b", b_plain)):
        response = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {plain}"})
        assert response.status_code == 202, response.text
        ids[name] = uuid.UUID(response.json()["id"])
    with session_scope() as session:
        held = {name: session.get(Job, job_id).in_backlog for name, job_id in ids.items()}
    assert held == {"a": True, "b": False}
    feeder().feed_model(model, 100, held_ttl_s=60)  # room for all: nobody is held any more
    response = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {a_plain}"})
    with session_scope() as session:
        assert not session.get(Job, uuid.UUID(response.json()["id"])).in_backlog


CRASH = """
import os, signal, sys
import redis
from llmq.catalog import get_catalog
from llmq.queues import make_celery
from llmq.settings import get_settings
from scheduler import feeder

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

take = feeder.jobs.take_from_backlog
if sys.argv[1] == "before-commit":  # the rows are updated, the transaction never commits
    feeder.jobs.take_from_backlog = lambda session, ids: (take(session, ids), die())
else:  # committed, nothing published
    feeder.publish_generate_many = die
settings = get_settings()
client = redis.Redis.from_url(settings.redis_url)
feeder.Feeder(settings, get_catalog(), client, make_celery(settings)).feed_model(sys.argv[2], 10)
"""


def crash_feeder(where: str, model: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, where, model], env=dict(os.environ), capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_a_feeder_killed_mid_feed_loses_and_duplicates_nothing(redis_client, start_worker):
    model = "backlog-kill"
    key_id, _ = new_key("crash")
    ids = backlogged(key_id, model, 40)

    def in_backlog() -> int:
        with session_scope() as session:
            query = sa.select(sa.func.count()).where(Job.id.in_(ids), Job.in_backlog)
            return session.scalar(query)

    crash_feeder("before-commit", model)
    assert in_backlog() == 40  # the transaction died with the process
    crash_feeder("after-commit", model)
    assert in_backlog() == 30
    assert waiting_count(redis_client, model, REDIS_PREFIX) == 0  # 10 jobs with no message

    settings = get_settings().model_copy(update={"republish_after_s": 0})
    celery = make_celery(settings)
    sweeper = Sweeper(settings, redis.Redis.from_url(REDIS_URL), celery, [model])
    lost = sweeper.sweep().republished
    assert len(lost) == 10
    publish_generate_many(celery, [jobs.Moved(uuid.UUID(i), model, 0).message() for i in lost])
    start_worker(model)  # 10 jobs with two messages each
    feed = feeder()
    wait_for(lambda: feed.feed_model(model, 10) == 0 and not in_backlog(), 60, "the backlog fed")

    def ended() -> list[tuple[str, int]] | None:
        with session_scope() as session:
            rows = session.execute(sa.select(Job.status, Job.attempts).where(Job.id.in_(ids)))
            rows = rows.all()
        return rows if all(s == "succeeded" for s, _ in rows) else None

    assert wait_for(ended, 60, "every job to succeed") == [("succeeded", 1)] * 40
    with session_scope() as session:
        ledger = session.scalar(sa.select(sa.func.count()).where(LedgerEntry.job_id.in_(ids)))
    assert ledger == 40


def test_a_pool_at_zero_scales_for_its_backlog_and_feeds_keys_by_weight(start_scheduler):
    """Two keys' backlogs, weights 2:1, and nothing in Redis: the scheduler starts a worker
    for work held only in Postgres, and the jobs that finish split 2:1 (within 5%)."""
    model = "pool-fair"
    a, _ = new_key("fair-heavy", weight=2)
    b, _ = new_key("fair-light", weight=1)
    backlogged(a, model, 400)
    backlogged(b, model, 400)
    start_scheduler(model)

    def finished() -> dict[uuid.UUID, int] | None:
        with session_scope() as session:
            rows = session.execute(
                sa.select(Job.api_key_id, sa.func.count())
                .where(Job.model == model, Job.status == "succeeded")
                .group_by(Job.api_key_id)
            ).all()
        counts = dict(rows)
        return counts if sum(counts.values()) >= 450 else None

    counts = wait_for(finished, 120, "450 jobs to finish", interval_s=0.2)
    ratio = counts[a] / counts[b]
    assert 2 * 0.95 <= ratio <= 2 * 1.05, counts
    with session_scope() as session:
        first = session.scalars(
            sa.select(ScalingEvent).where(ScalingEvent.model == model).order_by(ScalingEvent.id)
        ).first()
    assert first.reason == "scale_up_from_zero" and first.waiting >= 800
    print(f"\n[measured] finished per key at 2:1 weights: {counts[a]}:{counts[b]} = {ratio:.3f}")


def test_interactive_jobs_start_within_one_batch_slot_of_a_large_batch(api, start_scheduler):
    model = "pool-slot"  # echo, 4 jobs a batch, 300 ms each, one worker
    start_scheduler(model)
    heavy = test_chat.sdk(api, make_key("slot-batch"))
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    data = "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}) + "\n"
        for i in range(50_000)
    )  # fmt: skip
    file_id = heavy.files.create(file=("in.jsonl", data.encode()), purpose="batch").id
    batch = heavy.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def lines_done() -> int:
        with session_scope() as session:
            query = sa.select(sa.func.count()).where(
                Job.batch_id == batch.id, Job.status == "succeeded"
            )
            return session.scalar(query)

    wait_for(lambda: lines_done() >= 8, 120, "the batch to be running", interval_s=0.2)
    light = {"Authorization": f"Bearer {make_key('slot-interactive')}"}
    job = httpx.post(
        f"{api.url}/v1/jobs",
        json={"model": model, "prompt": "now", "max_tokens": 1},
        headers=light,
        timeout=10,
    ).json()
    done = wait_final(httpx.Client(base_url=api.url), light, job["id"], timeout_s=60)
    assert done["status"] == "succeeded"
    with session_scope() as session:
        mine = session.get(Job, uuid.UUID(job["id"]))
        ahead = session.scalar(
            sa.select(sa.func.count()).where(
                Job.batch_id == batch.id,
                Job.started_at > mine.created_at,
                Job.started_at < mine.started_at,
            )
        )
        backlog = session.scalar(
            sa.select(sa.func.count()).where(Job.batch_id == batch.id, Job.in_backlog)
        )
    assert not mine.in_backlog  # the interactive lane had room: straight to the queue
    assert ahead <= get_catalog().get(model).max_batch_size, ahead
    assert backlog > 45_000  # the batch waits in Postgres, not in Redis
    assert heavy.batches.cancel(batch.id).status in ("cancelling", "cancelled")
