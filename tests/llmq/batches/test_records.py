"""A batch's create against real Postgres: the input file streams through in chunks, and a
fault found after some chunks were written leaves a failed batch and no job."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import sqlalchemy as sa

from llmq import jobs
from llmq.batches import records
from llmq.batches.validate import CHAT, FileCheck
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.errors import BudgetExceeded
from llmq.keys import Caller, Limits, create_key
from llmq.models import Batch, Job


def line(custom_id: str) -> bytes:
    body = {"model": "echo", "messages": [{"role": "user", "content": custom_id}]}
    item = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(item).encode()


def caller(limits: Limits | None = None) -> Caller:
    with session_scope() as session:
        key, _ = create_key(session, "records", limits=limits)
        return Caller(key.id, key.name, False, limits or Limits())


def create(who: Caller, raw: list[bytes], cost_usd: Decimal | None = None) -> str:
    def to_job(accepted):
        accepted.job.reserved_cost_usd = cost_usd
        return accepted.job

    with session_scope() as session:
        batch, admitted = records.create_batch(
            session, who, input_file_id="file-x", endpoint=CHAT, completion_window="24h",
            window_s=3600, metadata=None, check=FileCheck(CHAT, get_catalog(), 10_000, len(raw)),
            lines=lambda: raw, to_job=to_job,
        )  # fmt: skip
        assert admitted.jobs == (0 if batch.errors else len(raw))
        return batch.id


def jobs_of(batch_id: str) -> list[str]:
    with session_scope() as session:
        query = sa.select(Job.custom_id).where(Job.batch_id == batch_id).order_by(Job.custom_id)
        return list(session.scalars(query))


def test_lines_are_written_in_chunks_into_one_batch(monkeypatch):
    monkeypatch.setattr(records, "CHUNK_LINES", 3)
    raw = [line(f"r{i:02}") for i in range(10)]
    batch_id = create(caller(), raw)
    assert jobs_of(batch_id) == [f"r{i:02}" for i in range(10)]
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert (batch.status, batch.total) == ("in_progress", 10)


def test_a_repeat_found_after_chunks_were_written_fails_the_batch_with_no_job(monkeypatch):
    monkeypatch.setattr(records, "CHUNK_LINES", 2)
    raw = [line(f"r{i}") for i in range(7)] + [line("r1")]
    batch_id = create(caller(), raw)
    assert jobs_of(batch_id) == []
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert (batch.status, batch.total) == ("failed", 0)
        assert [(e["line"], e["code"]) for e in batch.errors] == [(8, "duplicate_custom_id")]


def test_the_budget_is_checked_once_every_chunk_is_written(monkeypatch):
    """The key's reserved spend counts the batch's own rows once, not twice."""
    monkeypatch.setattr(records, "CHUNK_LINES", 2)
    who = caller(Limits(budget_usd=Decimal("1.00"), budget_period="day"))
    raw = [line(f"r{i}") for i in range(5)]
    assert len(jobs_of(create(who, raw, Decimal("0.20")))) == 5  # 1.00: fits exactly
    with pytest.raises(BudgetExceeded) as raised:
        create(who, [line("more")], Decimal("0.01"))
    assert raised.value.budget["reserved_usd"] == "1"
    with session_scope() as session:
        count = sa.select(sa.func.count()).where(
            Job.custom_id == "more", Job.api_key_id == who.key_id
        )
        assert session.scalar(count) == 0


def test_a_batch_over_the_drivers_parameter_limit_cancels_in_one_statement():
    """70,000 lines: more than the 65,535 bind parameters a statement may carry."""
    who = caller()
    batch_id = create(who, [line(f"r{i}") for i in range(70_000)])
    with session_scope() as session:
        stopped = jobs.cancel_batch_jobs(session, batch_id)
    assert len(stopped) == 70_000 and not any(s.running for s in stopped)
    with session_scope() as session:
        statuses = session.execute(
            sa.select(Job.status, sa.func.count())
            .where(Job.batch_id == batch_id)
            .group_by(Job.status)
        ).all()
    assert statuses == [("cancelled", 70_000)]
