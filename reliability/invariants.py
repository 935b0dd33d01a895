"""What must hold after every chaos round, as pure functions over rows read from Postgres,
the API and the webhook receiver (so each rule is table-tested on its own).

The rules are the system's own: a job ends in exactly one final state; a job has a ledger row
exactly when a worker recorded its outcome (every succeeded job, a failed job the engine
failed, a running job that was cancelled), with the job's tokens and the catalog's price,
written in the same transaction as the result; a finished job's result never changes once
written; every final job with a webhook has its event delivered; the ledger is what
`GET /v1/usage` reports; no key spends past its budget.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from llmq.ledger import token_cost_usd
from llmq.models import FINAL_STATUSES, JobStatus
from llmq.outbox import delivery_id


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    api_key_id: uuid.UUID
    model: str
    status: str
    prompt_tokens: int | None
    completion_tokens: int | None
    output_text: str | None
    finished_at: datetime | None
    webhook_url: str | None
    error_code: str | None = None
    attempts: int = 0

    def result(self) -> tuple:
        """What a finish writes; once the job is final it must never change."""
        return (self.status, self.output_text, self.prompt_tokens, self.completion_tokens,
                self.finished_at)  # fmt: skip


@dataclass(frozen=True)
class LedgerRow:
    job_id: uuid.UUID
    api_key_id: uuid.UUID
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    created_at: datetime


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    double_finishes: list[str] = field(default_factory=list)
    ledger_mismatches: list[str] = field(default_factory=list)
    webhooks_missing: list[str] = field(default_factory=list)
    webhooks_unexpected: list[str] = field(default_factory=list)
    budget_overruns: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in vars(self).items()}

    def ok(self) -> bool:
        return not any(vars(self).values())


def lost_jobs(accepted: set[str], jobs: dict[uuid.UUID, JobRow]) -> list[str]:
    """Ids the API answered 2xx for that Postgres does not hold."""
    held = {str(i) for i in jobs}
    return sorted(i for i in accepted if i not in held)


def stuck_jobs(jobs: dict[uuid.UUID, JobRow]) -> list[str]:
    return sorted(str(j.id) for j in jobs.values() if j.status not in FINAL_STATUSES)


def ledger_problems(
    jobs: dict[uuid.UUID, JobRow],
    ledger: list[LedgerRow],
    prices: dict[str, tuple[Decimal, Decimal]],
) -> tuple[list[str], list[str]]:
    """(ledger mismatches, double finishes) as "job-id: why" lines.

    A ledger row whose time differs from its job's finish time was written by another
    transaction than the result: two finishes of one job (a cancelled job is the exception,
    its finish time is the cancel's).
    """
    mismatches, doubles = [], []
    by_job: dict[uuid.UUID, list[LedgerRow]] = {}
    for row in ledger:
        by_job.setdefault(row.job_id, []).append(row)
    for job_id in by_job.keys() - jobs.keys():
        mismatches.append(f"{job_id}: ledger row of a job that does not exist")
    for job in jobs.values():
        rows = by_job.get(job.id, [])
        ran = job.completion_tokens is not None
        if job.status == JobStatus.SUCCEEDED and not ran:
            mismatches.append(f"{job.id}: succeeded without recorded tokens")
        if len(rows) > 1:
            doubles.append(f"{job.id}: {len(rows)} ledger rows")
        if job.status not in FINAL_STATUSES:
            continue  # a running job's finish may be committing right now
        if len(rows) != (1 if ran else 0):
            mismatches.append(f"{job.id}: {job.status}, ran={ran}, {len(rows)} ledger rows")
            continue
        if not rows:
            continue
        row = rows[0]
        if (row.prompt_tokens, row.completion_tokens) != (
            job.prompt_tokens,
            job.completion_tokens,
        ):
            doubles.append(f"{job.id}: ledger tokens differ from the job's result")
        if row.model != job.model or row.api_key_id != job.api_key_id:
            mismatches.append(f"{job.id}: ledger model/key differ from the job's")
        price_in, price_out = prices[job.model]
        expected = (
            token_cost_usd(row.prompt_tokens, row.completion_tokens, price_in, price_out)
            if job.status != JobStatus.FAILED
            else Decimal(0)
        )
        if row.cost_usd != expected:
            mismatches.append(f"{job.id}: cost {row.cost_usd} != {expected}")
        if job.status != JobStatus.CANCELLED and row.created_at != job.finished_at:
            doubles.append(f"{job.id}: ledger written at {row.created_at}, result at "
                           f"{job.finished_at}")  # fmt: skip
    return mismatches, doubles


def allowed_change(before: tuple, after: tuple) -> bool:
    """A final result may change in one way only: a job cancelled while it ran records, once,
    the tokens its worker used (status and finish time stay)."""
    if before == after:
        return True
    status, _, _, completion_tokens, finished_at = before
    return (
        status == JobStatus.CANCELLED
        and completion_tokens is None
        and (after[0], after[4]) == (status, finished_at)
    )


def changed_results(earlier: dict[uuid.UUID, tuple], jobs: dict[uuid.UUID, JobRow]) -> list[str]:
    """Jobs seen final before whose result is different now (rewritten or moved back)."""
    return sorted(
        f"{job_id}: {before} -> {jobs[job_id].result() if job_id in jobs else 'gone'}"
        for job_id, before in earlier.items()
        if job_id not in jobs or not allowed_change(before, jobs[job_id].result())
    )


def usage_problems(
    ledger: list[LedgerRow], usage_by_key: dict[uuid.UUID | None, dict]
) -> list[str]:
    """Each key's `GET /v1/usage` total against the sum of its ledger rows (key None: the
    admin's total over every key)."""
    problems = []
    for key_id, total in usage_by_key.items():
        rows = [r for r in ledger if key_id is None or r.api_key_id == key_id]
        expected = {
            "jobs": len(rows),
            "prompt_tokens": sum(r.prompt_tokens for r in rows),
            "completion_tokens": sum(r.completion_tokens for r in rows),
            "cost_usd": sum((r.cost_usd for r in rows), Decimal(0)),
        }
        seen = {
            "jobs": int(total["jobs"]),
            "prompt_tokens": int(total["prompt_tokens"]),
            "completion_tokens": int(total["completion_tokens"]),
            "cost_usd": Decimal(total["cost_usd"]),
        }
        if seen != expected:
            problems.append(f"key {key_id}: /v1/usage {seen} != ledger {expected}")
    return problems


def missing_webhooks(jobs: dict[uuid.UUID, JobRow], received: dict[str, int]) -> list[str]:
    """Final jobs with a webhook whose event id the receiver never verified."""
    return sorted(
        delivery_id(job.id)
        for job in jobs.values()
        if job.webhook_url and job.status in FINAL_STATUSES and delivery_id(job.id) not in received
    )


def unexpected_webhooks(jobs: dict[uuid.UUID, JobRow], received: dict[str, int]) -> list[str]:
    """Event ids the receiver verified that no final job with a webhook owes."""
    owed = {
        delivery_id(j.id) for j in jobs.values() if j.webhook_url and j.status in FINAL_STATUSES
    }
    return sorted(i for i in received if i not in owed)


def budget_overruns(ledger: list[LedgerRow], budgets: dict[uuid.UUID, Decimal]) -> list[str]:
    problems = []
    for key_id, budget in budgets.items():
        spent = sum((r.cost_usd for r in ledger if r.api_key_id == key_id), Decimal(0))
        if spent > budget:
            problems.append(f"key {key_id}: spent {spent} of a {budget} budget")
    return problems
