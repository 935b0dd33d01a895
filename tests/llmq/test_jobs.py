"""llmq.jobs against Postgres: claims are exclusive, finishes are fenced and written once."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa

from llmq import jobs
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job, LedgerEntry


def _new_job() -> uuid.UUID:
    with session_scope() as session:
        key, _ = create_key(session, "state")
        job = jobs.create_job(
            session, key.id, jobs.NewJob(model="tiny", params={"max_tokens": 4}, prompt="x")
        )
        return job.id


def _outcome(job_id, attempt, text="out") -> jobs.Outcome:
    return jobs.Outcome(
        job_id=job_id, attempt=attempt, succeeded=True, text=text, finish_reason="stop",
        prompt_tokens=3, completion_tokens=2, cost_usd=Decimal("0.001"),
    )  # fmt: skip


def test_concurrent_claims_have_one_winner():
    job_id = _new_job()
    winners: list[int] = []
    barrier = threading.Barrier(4)

    def claim(n: int) -> None:
        barrier.wait()
        with session_scope() as session:
            if jobs.claim_jobs(session, [job_id], f"w{n}", timedelta(minutes=5)):
                winners.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_finish_twice_writes_once_and_stale_attempts_write_nothing():
    job_id = _new_job()
    with session_scope() as session:
        (claimed,) = jobs.claim_jobs(session, [job_id], "w", timedelta(minutes=5))
    assert claimed.attempts == 1
    with session_scope() as session:
        assert jobs.finish_jobs(session, [_outcome(job_id, 0, "stale")]) == []
    with session_scope() as session:
        assert jobs.finish_jobs(session, [_outcome(job_id, 1)]) == [job_id]
    with session_scope() as session:
        assert jobs.finish_jobs(session, [_outcome(job_id, 1, "again")]) == []
        job = session.get(Job, job_id)
        count = session.scalar(
            sa.select(sa.func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == job_id)
        )
    assert job.status == "succeeded" and job.output_text == "out" and count == 1


def test_expired_lease_can_be_reclaimed_but_a_live_one_cannot():
    job_id = _new_job()
    with session_scope() as session:
        assert jobs.claim_jobs(session, [job_id], "first", timedelta(seconds=-1))
    with session_scope() as session:
        (again,) = jobs.claim_jobs(session, [job_id], "second", timedelta(minutes=5))
    assert again.attempts == 2 and again.worker == "second"
    with session_scope() as session:
        assert jobs.claim_jobs(session, [job_id], "third", timedelta(minutes=5)) == []


def test_cancelled_while_running_keeps_status_and_records_tokens():
    job_id = _new_job()
    with session_scope() as session:
        jobs.claim_jobs(session, [job_id], "w", timedelta(minutes=5))
        key_id = session.get(Job, job_id).api_key_id
    with session_scope() as session:
        _, refund = jobs.cancel_job(session, job_id, key_id)
    assert refund == 0  # the worker reconciles the tokens of a job it claimed
    with session_scope() as session:
        assert jobs.finish_jobs(session, [_outcome(job_id, 1)]) == [job_id]
        job = session.get(Job, job_id)
    assert job.status == "cancelled" and job.completion_tokens == 2


def test_release_puts_a_claimed_job_back_and_nul_text_is_stored():
    job_id = _new_job()
    with session_scope() as session:
        (claimed,) = jobs.claim_jobs(session, [job_id], "w", timedelta(minutes=5))
    with session_scope() as session:
        jobs.release_jobs(session, [(job_id, claimed.attempts)])
    with session_scope() as session:
        (again,) = jobs.claim_jobs(session, [job_id], "w2", timedelta(minutes=5))
    assert again.attempts == 2
    with session_scope() as session:
        assert jobs.finish_jobs(session, [_outcome(job_id, 2, "a\x00b")]) == [job_id]
        assert session.get(Job, job_id).output_text == "a\ufffdb"
