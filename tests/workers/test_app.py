"""A worker asked to stop (SIGTERM) finishes what it holds and loses nothing."""

from __future__ import annotations

import signal

import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import Job, LedgerEntry
from llmq.queues import waiting_count
from tests.conftest import REDIS_PREFIX, wait_final, wait_for


def test_sigterm_mid_batch_finishes_held_jobs_and_loses_none(
    client, auth, redis_client, start_worker
):
    body = {"model": "echo-slow", "prompt": "one two three", "temperature": 0}
    # Queued before the worker starts, so its first batch takes all three at once.
    held = [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(3)]
    worker = start_worker("echo-slow")

    def statuses() -> set[str]:
        with session_scope() as session:
            return set(session.scalars(sa.select(Job.status).where(Job.id.in_(held))))

    wait_for(lambda: statuses() == {"running"}, timeout_s=30, what="the batch running")

    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Warm shutdown" in worker.output(), 20, "the worker to begin its shutdown")
    later = [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(3)]
    assert worker.proc.wait(timeout=20) == 0, worker.output()
    assert all(wait_final(client, auth, i)["status"] == "succeeded" for i in held)

    # A BRPOP already waiting when the signal came may still take one message; it is run,
    # not dropped. Everything else stays queued for the next worker.
    states = [client.get(f"/v1/jobs/{i}", headers=auth).json()["status"] for i in later]
    assert states.count("queued") >= len(later) - 1, states
    assert waiting_count(redis_client, "echo-slow", REDIS_PREFIX) == states.count("queued")

    start_worker("echo-slow")
    finals = [wait_final(client, auth, i) for i in held + later]
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in finals)
    with session_scope() as session:
        counts = session.execute(
            sa.select(LedgerEntry.job_id, sa.func.count())
            .where(LedgerEntry.job_id.in_(held + later))
            .group_by(LedgerEntry.job_id)
        ).all()
    assert len(counts) == len(held + later) and all(n == 1 for _, n in counts)
