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

# No pool serves it: the claimed and queued jobs these tests leave are no scheduler's demand.
NO_POOL = "state-machine"


def _new_job() -> uuid.UUID:
    with session_scope() as session:
        key, _ = create_key(session, "state")
        job = jobs.create_job(
            session, key.id, jobs.NewJob(model=NO_POOL, params={"max_tokens": 4}, prompt="x")
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


def test_create_jobs_writes_the_rows_create_job_writes():
    """The bulk path (COPY) and the one-job path (ORM INSERT) store the same values,
    JSON nulls, NUL-free text, decimals and server defaults included."""
    from datetime import UTC, datetime

    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    shapes = [
        jobs.NewJob(model=NO_POOL, params={"max_tokens": 4}, prompt="a \\ tab\there\nline"),
        jobs.NewJob(
            model=NO_POOL, params={"max_tokens": 2, "stop": ["\n"]}, priority=3,
            messages=[{"role": "user", "content": 'quote " and \\N'}], metadata={"k": "v"},
            webhook_url="https://example.com/h", user="u1", expires_at=at, reserved_tokens=7,
            reserved_cost_usd=Decimal("0.000123"), custom_id="c1",
        ),
    ]  # fmt: skip
    columns = [c for c in Job.__table__.columns if c.name not in ("id", "created_at")]
    with session_scope() as session:
        key, _ = create_key(session, "bulk")
        one = [jobs.create_job(session, key.id, new).id for new in shapes]
        many = jobs.create_jobs(session, key.id, shapes)
        session.flush()

        def stored(job_id):
            return session.execute(sa.select(*columns).where(Job.id == job_id)).one()

        for a, b in zip(one, many, strict=True):
            assert stored(b) == stored(a)
        nulls = sa.select(sa.func.count()).where(Job.id.in_(one + many), Job.messages.is_(None))
        assert session.scalar(nulls) == 0  # JSON null, as the ORM writes it
