"""The scheduler end to end: real `llmq scheduler` processes starting real workers.

Figures printed here (cold start, recovery after SIGKILL, leader takeover) are measured, not
asserted; run with `-s` to see them.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import datetime

import sqlalchemy as sa

from llmq import events, jobs
from llmq.db import session_scope
from llmq.keys import hash_key
from llmq.models import ApiKey, Job, LedgerEntry, ScalingEvent
from tests.conftest import REDIS_PREFIX, wait_final, wait_for


def submit(client, auth, model: str, n: int, **extra) -> list[str]:
    body = {"model": model, "prompt": "one two three", "temperature": 0, **extra}
    out = []
    for _ in range(n):
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.text
        out.append(response.json()["id"])
    return out


def scaling_events(model: str) -> list[ScalingEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                sa.select(ScalingEvent).where(ScalingEvent.model == model).order_by(ScalingEvent.id)
            )
        )


def ledger_counts(ids: list[str]) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(LedgerEntry.job_id, sa.func.count())
            .where(LedgerEntry.job_id.in_(ids))
            .group_by(LedgerEntry.job_id)
        ).all()
    return {str(job_id): n for job_id, n in rows}


def workers_of(redis_client, model: str) -> list[dict]:
    return [
        r for r in events.live_worker_records(redis_client, REDIS_PREFIX) if r.get("model") == model
    ]


def lock_tries_not_held() -> list[tuple[int, datetime]]:
    """Postgres sessions of this run whose last query tried the leader lock and that hold no
    advisory lock: (backend pid, when it last tried). A standby scheduler tries every round."""
    query = sa.text(
        "SELECT a.pid, a.query_start FROM pg_stat_activity a"
        " WHERE a.datname = current_database()"
        " AND a.query LIKE 'SELECT pg_try_advisory_lock%'"
        " AND NOT EXISTS (SELECT 1 FROM pg_locks l"
        "   WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)"
    )
    with session_scope() as session:
        return [(pid, at) for pid, at in session.execute(query)]


def pool_row(client, auth, model: str) -> dict:
    models = client.get("/v1/models", headers=auth).json()["data"]
    return next(m for m in models if m["id"] == model)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_burst_to_idle_pool_scales_up_finishes_and_returns_to_zero(
    client, auth, redis_client, start_scheduler
):
    model = "pool-burst"
    start_scheduler(model)
    wait_for(lambda: redis_client.hget(events.pools_key(REDIS_PREFIX), model), 30, "first step")
    assert pool_row(client, auth, model)["pool"]["actual_replicas"] == 0

    landed = time.monotonic()
    ids = submit(client, auth, model, 12)
    first = wait_final(client, auth, ids[0], timeout_s=120)
    first_done_s = time.monotonic() - landed
    finals = [wait_final(client, auth, i, timeout_s=120) for i in ids]
    all_done_s = time.monotonic() - landed
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in finals)
    assert all(n == 1 for n in ledger_counts(ids).values()) and len(ledger_counts(ids)) == 12

    grown = scaling_events(model)
    assert grown[0].from_replicas == 0 and grown[0].to_replicas >= 1
    assert grown[0].reason == "scale_up_from_zero" and grown[0].waiting >= 1
    assert max(e.to_replicas for e in grown) == 2  # 12 jobs / 4 per replica, capped at max 2

    wait_for(lambda: scaling_events(model)[-1].to_replicas == 0, 60, "scale to zero")
    wait_for(lambda: not workers_of(redis_client, model), 60, "workers to exit")
    steps = [(e.from_replicas, e.to_replicas, e.reason) for e in scaling_events(model)]
    assert steps[-1][1:] == (0, "scale_to_zero"), steps
    for before, after in itertools.pairwise(steps):
        assert after[0] == before[1], steps  # every change is recorded, in order
    row = wait_for(
        lambda: (r := pool_row(client, auth, model))["pool"]["actual_replicas"] == 0 and r,
        10,
        "API to show the pool at zero",
    )
    assert row["pool"]["desired_replicas"] == 0 and row["live"]["workers"] == 0

    queue_ms = _ts(first["started_at"]) - _ts(first["created_at"])
    print(
        f"\n[measured] idle pool -> first job claimed (cold start): "
        f"{queue_ms.total_seconds():.2f}s; first job done {first_done_s:.2f}s; "
        f"12 jobs done {all_done_s:.2f}s; steps {steps}"
    )


def test_worker_killed_mid_batch_its_jobs_finish_elsewhere_once(
    client, auth, redis_client, start_scheduler
):
    model = "pool-kill"
    start_scheduler(model)
    ids = submit(client, auth, model, 4)

    def all_running() -> bool:
        with session_scope() as session:
            states = session.scalars(sa.select(Job.status).where(Job.id.in_(ids))).all()
        return set(states) == {"running"}

    wait_for(all_running, 120, "the batch to run")
    [victim] = workers_of(redis_client, model)
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()

    # The lease (5 s), a sweep, a fresh worker and the 4 s batch fit in this deadline many
    # times over; the Redis visibility timeout (an hour) would not.
    deadline = time.monotonic() + 90
    finals = [wait_final(client, auth, i, timeout_s=deadline - time.monotonic()) for i in ids]
    recovered_s = time.monotonic() - killed
    assert all(j["status"] == "succeeded" for j in finals), finals
    assert all(j["attempts"] == 2 for j in finals)  # the lost claim, then the one that finished
    assert ledger_counts(ids) == dict.fromkeys(ids, 1)
    with session_scope() as session:
        nodes = set(session.scalars(sa.select(Job.worker).where(Job.id.in_(ids))))
    assert victim["node"] not in nodes
    print(f"\n[measured] SIGKILL of a worker mid-batch -> its 4 jobs done: {recovered_s:.2f}s")


def test_jobs_without_messages_are_published_again(
    client, key, auth, redis_client, start_scheduler
):
    model = "pool-lost"
    # A crash between commit and publish: rows with no message at all, of the caller's key.
    with session_scope() as session:
        key_id = session.scalar(sa.select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
        orphans = [
            str(jobs.create_job(session, key_id, jobs.NewJob(model, {"max_tokens": 4}, "hi")).id)
            for _ in range(3)
        ]
    # Redis losing its data: published jobs, then every key of this deployment gone.
    published = submit(client, auth, model, 3)
    keys = list(redis_client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
    redis_client.delete(*keys)
    assert not redis_client.exists(f"{REDIS_PREFIX}llmq.model.{model}")

    start_scheduler(model)
    ids = orphans + published
    finals = [wait_final(client, auth, i, timeout_s=120) for i in ids]
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in finals), finals
    assert ledger_counts(ids) == dict.fromkeys(ids, 1)
    with session_scope() as session:
        stamps = session.scalars(sa.select(Job.published_at).where(Job.id.in_(ids))).all()
    assert all(stamps)  # each was published again by the sweeper


def test_two_schedulers_one_acts_and_the_other_takes_over(
    client, auth, redis_client, start_scheduler
):
    model = "pool-leader"
    first = start_scheduler(model)
    leader = wait_for(
        lambda: redis_client.get(events.leader_key(REDIS_PREFIX, [model])), 30, "a leader"
    )
    assert leader.decode().endswith(f":{first.proc.pid}")
    second = start_scheduler(model)
    tries: dict[int, set[datetime]] = {}

    def second_tried_twice() -> bool:
        for pid, at in lock_tries_not_held():
            tries.setdefault(pid, set()).add(at)
        return any(len(times) >= 2 for times in tries.values())

    wait_for(second_tried_twice, 60, "the second scheduler to try the lock twice", process=second)
    assert (
        redis_client.get(events.leader_key(REDIS_PREFIX, [model]))
        .decode()
        .endswith(f":{first.proc.pid}")
    )

    ids = submit(client, auth, model, 2)
    assert all(wait_final(client, auth, i, 120)["status"] == "succeeded" for i in ids)
    assert len(workers_of(redis_client, model)) == 1  # one scheduler acted: one worker
    before = len(scaling_events(model))

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    killed = time.monotonic()
    wait_for(
        lambda: (
            (v := redis_client.get(events.leader_key(REDIS_PREFIX, [model])))
            and v.decode().endswith(f":{second.proc.pid}")
        ),
        30,
        "the second scheduler to lead",
    )
    takeover_s = time.monotonic() - killed
    assert takeover_s < 10

    # The new leader adopts the worker the dead one left and goes on scaling.
    more = submit(client, auth, model, 2)
    assert all(wait_final(client, auth, i, 120)["status"] == "succeeded" for i in more)
    wait_for(lambda: not workers_of(redis_client, model), 60, "the pool to go to zero")
    assert scaling_events(model)[-1].to_replicas == 0 and len(scaling_events(model)) > before
    print(f"\n[measured] leader SIGKILL -> the other scheduler leads: {takeover_s:.2f}s")
