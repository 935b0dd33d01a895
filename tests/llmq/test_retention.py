"""Retention: `llmq prune` and the sweeper clear old finished jobs' prompts and outputs and
keep everything that counts (the rows, their tokens, the ledger, usage)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
import sqlalchemy as sa

from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Batch, Job, JobStatus, LedgerEntry, WebhookDelivery
from llmq.queues import make_celery
from llmq.settings import get_settings
from scheduler.sweeper import Sweeper
from tests.conftest import ROOT

OLD = timedelta(days=1000)  # far older than anything else in the suite's database
PRUNE_DAYS = "900"


def _job(session, key_id, status, finished_ago: timedelta | None, **extra) -> Job:
    at = datetime.now(UTC) - (finished_ago or timedelta(0))
    job = Job(api_key_id=key_id, model="echo", status=status, prompt="secret prompt",
              params={}, created_at=at, attempts=1, **extra)  # fmt: skip
    if finished_ago is not None:
        job.finished_at, job.output_text, job.finish_reason = at, "secret output", "stop"
        job.prompt_tokens, job.completion_tokens = 3, 4
    session.add(job)
    session.flush()
    if status == JobStatus.SUCCEEDED:
        session.add(LedgerEntry(job_id=job.id, api_key_id=key_id, model="echo", prompt_tokens=3,
                                completion_tokens=4, cost_usd=Decimal("0.25"), created_at=at))  # fmt: skip
    return job


def test_prune_clears_old_finished_jobs_and_keeps_the_books(client):
    with session_scope() as session:
        key, plain = create_key(session, f"retention-{uuid.uuid4().hex[:6]}")
        old = _job(session, key.id, JobStatus.SUCCEEDED, OLD)
        old_failed = _job(session, key.id, JobStatus.FAILED, OLD, error={"code": "x"})
        recent = _job(session, key.id, JobStatus.SUCCEEDED, timedelta(days=1))
        waiting = _job(session, key.id, JobStatus.QUEUED, None)
        waiting.created_at = datetime.now(UTC) - OLD
        batch = Batch(id=f"batch_{uuid.uuid4().hex}", api_key_id=key.id, endpoint="/v1/chat/completions",
                      input_file_id="file-x", completion_window="24h", status="in_progress",
                      expires_at=datetime.now(UTC) + timedelta(hours=1))  # fmt: skip
        session.add(batch)
        session.flush()
        in_open_batch = _job(session, key.id, JobStatus.SUCCEEDED, OLD, batch_id=batch.id)
        session.add(WebhookDelivery(id=f"msg_{uuid.uuid4().hex}", job_id=old.id, api_key_id=key.id,
                                    event_type="job.succeeded", url="https://example.com/h",
                                    status="delivered", payload='{"output": "secret output"}'))  # fmt: skip
    headers = {"Authorization": f"Bearer {plain}"}
    usage_before = client.get("/v1/usage", params={"group_by": "day"}, headers=headers).json()

    done = subprocess.run([sys.executable, "-m", "cli", "prune", "--older-than-days", PRUNE_DAYS],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pruned" in done.stdout

    pruned = client.get(f"/v1/jobs/{old.id}", headers=headers).json()
    assert pruned["pruned_at"] is not None and pruned["output"] is None
    assert pruned["status"] == "succeeded" and pruned["usage"]["total_tokens"] == 7
    assert pruned["usage"]["cost_usd"] == "0.25"
    with session_scope() as session:
        rows = {j.id: j for j in session.scalars(sa.select(Job).where(Job.api_key_id == key.id))}
        delivery = session.scalars(
            sa.select(WebhookDelivery).where(WebhookDelivery.job_id == old.id)
        ).one()
        ledger_rows = session.scalar(
            sa.select(sa.func.count()).where(LedgerEntry.api_key_id == key.id)
        )
    for gone in (old.id, old_failed.id):
        assert rows[gone].prompt is None and rows[gone].output_text is None
        assert rows[gone].pruned_at is not None
    assert rows[old_failed.id].error == {"code": "x"}  # what went wrong is kept
    for kept in (recent.id, waiting.id, in_open_batch.id):
        assert rows[kept].prompt == "secret prompt" and rows[kept].pruned_at is None
    assert rows[recent.id].output_text == "secret output"
    assert delivery.payload is None and delivery.status == "delivered"
    assert ledger_rows == 3
    assert client.get("/v1/usage", params={"group_by": "day"}, headers=headers).json() == (
        usage_before
    )


def test_the_sweeper_prunes_a_chunk_each_pass_once_retention_is_set(environment):
    with session_scope() as session:
        key, _ = create_key(session, f"retention-{uuid.uuid4().hex[:6]}")
        old = _job(session, key.id, JobStatus.SUCCEEDED, OLD)
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    off = Sweeper(settings, client, make_celery(settings), ["echo"])
    assert off.sweep().pruned == []
    on = Sweeper(settings.model_copy(update={"retention_days": 900.0}), client,
                 make_celery(settings), ["echo"])  # fmt: skip
    assert str(old.id) in on.sweep().pruned
    with session_scope() as session:
        assert session.get(Job, old.id).prompt is None


def test_prune_refuses_no_age(environment):
    done = subprocess.run([sys.executable, "-m", "cli", "prune"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "older-than-days" in done.stdout
