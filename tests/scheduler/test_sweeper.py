"""The sweeper against real Postgres and Redis: orphans, poison jobs, deadlines, races."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import redis
import sqlalchemy as sa

from llmq import events, jobs
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job
from llmq.queues import make_celery, queue_keys, waiting_count
from llmq.settings import get_settings
from scheduler.sweeper import Sweeper
from tests.conftest import REDIS_PREFIX, REDIS_URL

MODEL = "unserved"  # no worker serves it, so messages stay where the sweeper puts them


def _sweeper(models: list[str] | None = None, **overrides) -> Sweeper:
    settings = get_settings().model_copy(update=overrides)
    return Sweeper(settings, redis.Redis.from_url(REDIS_URL), make_celery(settings), models)


def _jobs(n: int, **values) -> list[uuid.UUID]:
    with session_scope() as session:
        key, _ = create_key(session, "sweeper")
        ids = [
            jobs.create_job(session, key.id, jobs.NewJob(MODEL, {"max_tokens": 4}, "x")).id
            for _ in range(n)
        ]
        if values:
            session.execute(sa.update(Job).where(Job.id.in_(ids)).values(**values))
    return ids


def _rows(ids) -> list[Job]:
    with session_scope() as session:
        return list(session.scalars(sa.select(Job).where(Job.id.in_(ids))))


def _clear_queue(client) -> None:
    client.delete(*queue_keys(MODEL, REDIS_PREFIX))


def _messages_for(client, job_ids) -> int:
    """Messages waiting for these jobs (the sweep also republishes what earlier tests left)."""
    wanted = {str(i) for i in job_ids}
    raw = [m for key in queue_keys(MODEL, REDIS_PREFIX) for m in client.lrange(key, 0, -1)]
    return sum(1 for m in raw for job_id in wanted if job_id.encode() in base64.b64decode(
        json.loads(m)["body"]))  # fmt: skip


def test_jobs_whose_lease_ran_out_go_back_and_poison_jobs_fail(redis_client):
    """The lease in Postgres decides; a heartbeat key present or missing in Redis does not."""
    _clear_queue(redis_client)
    far = datetime.now(UTC) + timedelta(hours=1)
    past = datetime.now(UTC) - timedelta(seconds=1)
    alive_node = f"alive-{uuid.uuid4().hex[:6]}@h"
    redis_client.set(events.worker_key(REDIS_PREFIX, MODEL, alive_node), "{}", ex=60)
    dead = _jobs(2, status="running", worker="dead@h", attempts=1, lease_expires_at=past)
    poison = _jobs(1, status="running", worker="dead@h", attempts=3, lease_expires_at=past)
    held = _jobs(1, status="running", worker=alive_node, attempts=1, lease_expires_at=far)
    unseen = _jobs(1, status="running", worker="no-heartbeat@h", attempts=1, lease_expires_at=far)
    lapsed = _jobs(1, status="running", worker=alive_node, attempts=1, lease_expires_at=past)

    report = _sweeper(max_attempts=3).sweep()

    mine = {str(i) for i in dead + poison + held + unseen + lapsed}
    assert sorted(mine & set(report.requeued)) == sorted(str(i) for i in dead + lapsed)
    assert mine & set(report.failed) == {str(poison[0])}
    for job in _rows(dead + lapsed):
        assert (job.status, job.worker, job.lease_expires_at) == ("queued", None, None)
        assert job.published_at is not None
    [failed] = _rows(poison)
    assert failed.status == "failed" and failed.error["code"] == "max_attempts_exceeded"
    assert failed.finished_at is not None
    assert {j.status for j in _rows(held + unseen)} == {"running"}  # their leases hold
    assert _messages_for(redis_client, dead + lapsed + poison + held + unseen) == 3  # one each
    again = _sweeper().sweep()
    assert not mine & {*again.requeued, *again.failed, *again.expired, *again.republished}
    _clear_queue(redis_client)
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id.in_(held + unseen)))


def test_queued_jobs_past_their_deadline_expire_and_are_never_claimed(redis_client):
    past = datetime.now(UTC) - timedelta(seconds=1)
    late = _jobs(2, expires_at=past)
    on_time = _jobs(1, expires_at=datetime.now(UTC) + timedelta(hours=1))
    with session_scope() as session:  # a worker would skip it too
        assert jobs.claim_jobs(session, late, "w@h", timedelta(minutes=1)) == []
    report = _sweeper().sweep()
    assert {str(i) for i in late} <= set(report.expired)
    for job in _rows(late):
        assert job.status == "expired" and job.error["code"] == "expired" and job.finished_at
    assert _rows(on_time)[0].status == "queued"
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id.in_(on_time)))


def test_submit_sets_a_deadline(client, auth):
    body = {"model": MODEL, "prompt": "x", "expires_in_s": 90}
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    created, expires = (datetime.fromisoformat(job[k]) for k in ("created_at", "expires_at"))
    assert timedelta(seconds=85) < expires - created < timedelta(seconds=95)
    default = client.post("/v1/jobs", json={"model": MODEL, "prompt": "x"}, headers=auth).json()
    span = datetime.fromisoformat(default["expires_at"]) - datetime.fromisoformat(
        default["created_at"]
    )
    assert abs(span.total_seconds() - get_settings().default_expires_in_s) < 10
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id.in_([job["id"], default["id"]])))


def test_lost_messages_are_found_and_two_sweepers_publish_each_once(redis_client):
    _clear_queue(redis_client)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    lost = _jobs(20, created_at=stale)
    present = _jobs(1, created_at=stale)
    celery = make_celery(get_settings())
    from llmq.queues import Message, publish_generate

    publish_generate(celery, Message(str(present[0]), MODEL, 0))  # its message is in the queue
    fresh = _jobs(1)  # just committed: its API may still be publishing

    reports = []
    barrier = threading.Barrier(2)

    def sweep() -> None:
        sweeper = _sweeper(republish_after_s=30)
        barrier.wait()
        reports.append(sweeper.sweep())

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = [i for r in reports for i in r.republished]
    assert len(published) == len(set(published))  # none twice
    assert {str(i) for i in lost} <= set(published)
    assert waiting_count(redis_client, MODEL, REDIS_PREFIX) == 21
    assert _rows(present)[0].published_at is None and _rows(fresh)[0].published_at is None
    _clear_queue(redis_client)
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id.in_(lost + present + fresh)))


def test_a_lost_batch_line_is_published_again_on_its_batch_lane(redis_client):
    from llmq.models import Batch
    from llmq.queues import batch_queue_name, priority_keys

    _clear_queue(redis_client)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    [line] = _jobs(1, created_at=stale)
    batch_id = f"batch_{uuid.uuid4().hex}"
    with session_scope() as session:
        key_id = session.scalar(sa.select(Job.api_key_id).where(Job.id == line))
        session.add(
            Batch(
                id=batch_id,
                api_key_id=key_id,
                endpoint="/v1/completions",
                input_file_id="f",
                completion_window="24h",
                status="in_progress",
                expires_at=stale + timedelta(days=1),
            )
        )
        session.flush()
        session.execute(sa.update(Job).where(Job.id == line).values(batch_id=batch_id))

    report = _sweeper([MODEL], republish_after_s=30).sweep()

    assert report.republished == [str(line)]
    lane = priority_keys(batch_queue_name(MODEL), REDIS_PREFIX)
    assert sum(redis_client.llen(k) for k in lane) == 1
    _clear_queue(redis_client)
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id == line))
        session.execute(sa.delete(Batch).where(Batch.id == batch_id))


def test_a_message_counts_for_the_job_it_carries_not_the_jobs_it_mentions(redis_client):
    """Queued and held messages are recognised by their task id; a message whose body merely
    mentions another job's id is not that job's message."""
    import json

    from llmq.queues import Message, publish_generate, queue_keys

    _clear_queue(redis_client)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    queued, mentioned, held = (str(i) for i in _jobs(3, created_at=stale))
    publish_generate(make_celery(get_settings()), Message(queued, MODEL, 0))
    [key] = [k for k in queue_keys(MODEL, REDIS_PREFIX) if redis_client.llen(k)]
    message = json.loads(redis_client.lpop(key))
    message["headers"]["argsrepr"] = f"['{queued}', 'see {mentioned}']"
    redis_client.lpush(key, json.dumps(message))
    held_message = dict(message, headers=dict(message["headers"], id=held))
    held_message["properties"] = dict(message["properties"], correlation_id=held)
    unacked = REDIS_PREFIX + "unacked"
    tag = f"tag-{uuid.uuid4().hex}"
    redis_client.hset(unacked, tag, json.dumps([held_message, "", f"llmq.model.{MODEL}"]))

    report = _sweeper([MODEL], republish_after_s=30).sweep()

    assert mentioned in report.republished
    assert queued not in report.republished and held not in report.republished
    redis_client.hdel(unacked, tag)
    _clear_queue(redis_client)
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id.in_([queued, mentioned, held])))


def test_jobs_of_a_killed_worker_finish_on_another_once_their_lease_runs_out(
    client, auth, start_worker
):
    """No backend noticed this death (another host, a pod): only the lapsed lease tells."""
    import os
    import signal
    import time

    from llmq.models import LedgerEntry
    from tests.conftest import wait_final, wait_for

    model = "pool-kill"
    body = {"model": model, "prompt": "a b", "temperature": 0}
    ids = [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(4)]
    victim = start_worker(model)  # all four are waiting: they run as one batch
    wait_for(lambda: {j.status for j in _rows(ids)} == {"running"}, 120, "the batch to run")
    os.killpg(victim.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    start_worker(model, wait=False)

    sweeper = _sweeper([model])
    wait_for(lambda: sweeper.sweep().requeued, 60, "the sweeper to requeue", interval_s=0.2)
    requeued_s = time.monotonic() - killed
    finals = [wait_final(client, auth, i, timeout_s=120) for i in ids]
    done_s = time.monotonic() - killed
    assert all(j["status"] == "succeeded" and j["attempts"] == 2 for j in finals), finals
    with session_scope() as session:
        counts = session.execute(
            sa.select(LedgerEntry.job_id, sa.func.count())
            .where(LedgerEntry.job_id.in_(ids))
            .group_by(LedgerEntry.job_id)
        ).all()
    assert len(counts) == 4 and all(n == 1 for _, n in counts)
    lease = get_settings().job_lease_s
    print(
        f"\n[measured] SIGKILL, lease only ({lease:.0f}s): requeued after "
        f"{requeued_s:.2f}s, its 4 jobs done after {done_s:.2f}s"
    )


def test_a_message_a_killed_worker_took_and_never_claimed_is_published_again(
    client, auth, start_worker, redis_client
):
    """The job is queued and its message sits in kombu's `unacked` hash until the visibility
    timeout; once it has been held longer than `held_message_timeout_s` it counts as lost."""
    import os
    import signal

    from llmq.broker import held_since
    from tests.conftest import wait_for

    model = "held-kill"
    body = {"model": model, "prompt": "a b", "temperature": 0}
    victim = start_worker(model)
    first = client.post("/v1/jobs", json=body, headers=auth).json()["id"]
    wait_for(lambda: _rows([first])[0].status == "running", 60, "the first batch to run")
    second = client.post("/v1/jobs", json=body, headers=auth).json()["id"]
    wait_for(lambda: second in held_since(redis_client, REDIS_PREFIX, 0), 30, "a worker to take it")
    assert _rows([second])[0].status == "queued"  # taken, not claimed: it waits for the engine
    os.killpg(victim.proc.pid, signal.SIGKILL)
    start_worker(model, wait=False)

    sweeper = _sweeper([model], republish_after_s=1, held_message_timeout_s=2)
    republished: set[str] = set()

    def both_done() -> bool:  # the first job comes back once its lease runs out
        republished.update(sweeper.sweep().republished)
        return {j.status for j in _rows([first, second])} == {"succeeded"}

    wait_for(both_done, 120, "both jobs to succeed")
    assert second in republished
    attempts = {str(j.id): j.attempts for j in _rows([first, second])}
    assert attempts == {first: 2, second: 1}  # the second was never claimed before
