"""Postgres leases decide who holds a running job; Redis heartbeats never do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from llmq import events
from llmq.db import session_scope
from llmq.models import Job, LedgerEntry
from tests.conftest import REDIS_PREFIX, wait_final, wait_for
from tests.scheduler.test_sweeper import _rows, _sweeper


def _submit(client, auth, model: str) -> str:
    body = {"model": model, "prompt": "a b", "temperature": 0}
    return client.post("/v1/jobs", json=body, headers=auth).json()["id"]


def test_a_live_worker_keeps_its_job_when_redis_loses_its_heartbeat(
    client, auth, redis_client, start_worker
):
    """Redis flushed, restarted empty or failed over: the worker is alive and still renews its
    lease in Postgres, so no sweep takes its job, however often the heartbeat is missing."""
    model = "echo-long"  # the job runs for two leases: only renewals keep it
    start_worker(model, LLMQ_JOB_LEASE_S="3")
    job_id = _submit(client, auth, model)
    wait_for(lambda: _rows([job_id])[0].status == "running", 60, "the job to run")
    sweeper = _sweeper([model])
    moved: list[str] = []

    def sweep_without_heartbeat() -> bool:
        """Drop the heartbeat and sweep, each poll while the job runs; True once it ended."""
        for key in redis_client.scan_iter(match=events.worker_pattern(REDIS_PREFIX, model)):
            redis_client.delete(key)  # this run's keys only
        report = sweeper.sweep()
        moved.extend([*report.requeued, *report.failed])
        return _rows([job_id])[0].status != "running"

    wait_for(sweep_without_heartbeat, 60, "the job to end", interval_s=0.2)
    assert job_id not in moved
    final = wait_final(client, auth, job_id)
    assert final["status"] == "succeeded" and final["attempts"] == 1, final
    with session_scope() as session:
        ledger = session.scalar(sa.select(sa.func.count()).where(LedgerEntry.job_id == final["id"]))
    assert ledger == 1


def test_a_worker_whose_claim_moved_on_writes_nothing_and_says_so(client, auth, start_worker):
    """Its lease lapsed and another worker took the job: the first one's finish is fenced off,
    it renews nothing of the new claim, and its task does not report the job as succeeded."""
    worker = start_worker("echo-slow")
    job_id = _submit(client, auth, "echo-slow")
    wait_for(lambda: _rows([job_id])[0].status == "running", 60, "the job to run")
    taken_until = datetime.now(UTC) + timedelta(hours=1)
    with session_scope() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(attempts=Job.attempts + 1, worker="other@h", lease_expires_at=taken_until)
        )
    line = wait_for(
        lambda: next((ln for ln in worker.output().splitlines() if f"[{job_id}] succeeded" in ln
                      or f"[{job_id}] retry" in ln), None),
        60,
        "the task to end",
    )  # fmt: skip
    assert "'superseded'" in line, line
    [job] = _rows([job_id])
    assert (job.status, job.worker, job.attempts) == ("running", "other@h", 2)
    assert job.lease_expires_at == taken_until and job.output_text is None
    with session_scope() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(status="cancelled"))
