"""The sweeper against real Postgres and Redis: orphans, poison jobs, deadlines, races."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import redis
import sqlalchemy as sa

from llmq import events, jobs
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job
from llmq.queues import make_celery, waiting_count
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
    from llmq.queues import queue_keys

    client.delete(*queue_keys(MODEL, REDIS_PREFIX))


def test_jobs_of_a_dead_worker_go_back_and_poison_jobs_fail(redis_client):
    _clear_queue(redis_client)
    far = datetime.now(UTC) + timedelta(hours=1)
    alive_node = f"alive-{uuid.uuid4().hex[:6]}@h"
    redis_client.set(events.worker_key(REDIS_PREFIX, MODEL, alive_node), "{}", ex=60)
    dead = _jobs(2, status="running", worker="dead@h", attempts=1, lease_expires_at=far)
    poison = _jobs(1, status="running", worker="dead@h", attempts=3, lease_expires_at=far)
    held = _jobs(1, status="running", worker=alive_node, attempts=1, lease_expires_at=far)
    lapsed = _jobs(1, status="running", worker=alive_node, attempts=1,
                   lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))  # fmt: skip

    report = _sweeper(max_attempts=3).sweep()

    mine = {str(i) for i in dead + poison + held + lapsed}
    assert sorted(mine & set(report.requeued)) == sorted(str(i) for i in dead + lapsed)
    assert mine & set(report.failed) == {str(poison[0])}
    for job in _rows(dead + lapsed):
        assert (job.status, job.worker, job.lease_expires_at) == ("queued", None, None)
        assert job.published_at is not None
    [failed] = _rows(poison)
    assert failed.status == "failed" and failed.error["code"] == "max_attempts_exceeded"
    assert failed.finished_at is not None
    assert _rows(held)[0].status == "running"  # its worker is alive and its lease holds
    assert waiting_count(redis_client, MODEL, REDIS_PREFIX) == 3  # one message each
    again = _sweeper().sweep()
    assert not mine & {*again.requeued, *again.failed, *again.expired, *again.republished}
    _clear_queue(redis_client)


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
    from llmq.queues import publish_generate

    publish_generate(celery, str(present[0]), MODEL, 0)  # its message is in the queue
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


def test_jobs_of_a_worker_whose_heartbeat_expired_finish_on_another(client, auth, start_worker):
    """No backend noticed this death (another host, a pod): only the heartbeat tells."""
    import os
    import signal
    import time

    from llmq.models import LedgerEntry
    from tests.conftest import wait_final, wait_for

    model = "pool-kill"
    victim = start_worker(model)
    body = {"model": model, "prompt": "a b", "temperature": 0}
    ids = [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(4)]
    wait_for(lambda: {j.status for j in _rows(ids)} == {"running"}, 120, "the batch to run")
    os.killpg(victim.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    start_worker(model, wait=False)

    sweeper = _sweeper([model])
    requeued_s = None
    while requeued_s is None and time.monotonic() - killed < 60:
        if sweeper.sweep().requeued:
            requeued_s = time.monotonic() - killed
        time.sleep(0.2)
    assert requeued_s is not None
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
    ttl = 3 * get_settings().worker_heartbeat_s
    print(
        f"\n[measured] SIGKILL, heartbeat only (TTL {ttl:.0f}s): requeued after "
        f"{requeued_s:.2f}s, its 4 jobs done after {done_s:.2f}s"
    )
