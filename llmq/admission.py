"""Admitting a job: concurrency limit, budget reservation, idempotency, and the job row.

All of it happens in one transaction; a lone job with no idempotency key, concurrency
limit or budget is a single INSERT, which needs none. A request with an Idempotency-Key
first locks that key and looks it up: a replay answers before any limit is charged or
checked. Keys with a concurrency limit or a budget then take a per-key advisory lock, so the
count of jobs in flight and the spend are read and reserved atomically across API replicas.
A request that does not become jobs after it was charged gets its charge back here. A job
the exact cache answered (`NewJob.answer`) is never in flight; its row is created final,
and its ledger and webhook outbox rows are written in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import budgets, idempotency, jobs, outbox
from llmq.db import session_scope, statement_scope
from llmq.errors import BudgetExceeded, JobStateConflict, RateLimited
from llmq.keys import Caller
from llmq.ledger import usd

ADJECTIVE = {"day": "daily", "month": "monthly"}


class Charge(Protocol):
    """The key's rates for one request: charged once it is known not to be a replay (a
    replay is never charged), refunded when it does not become jobs after all."""

    def __call__(self) -> None: ...

    def refund(self) -> None: ...


class NoCharge:
    def __call__(self) -> None:
        pass

    def refund(self) -> None:
        pass


@dataclass(frozen=True)
class Admitted:
    ids: list[uuid.UUID]  # in the order of the new jobs
    replayed: bool  # an identical earlier request made them; nothing new was written
    job: sa.Row | None = None  # one new job's whole row, read like a `Job` (None: many, replay)
    answered: list[uuid.UUID] = field(default_factory=list)  # jobs the cache answered, final
    deliveries: list[str] = field(default_factory=list)  # their webhook outbox rows


def _check_limits(session: Session, caller: Caller, new_jobs: list[jobs.NewJob]) -> None:
    limits = caller.limits
    if limits.max_concurrent is None and limits.budget_usd is None:
        return
    budgets.lock_key(session, caller.key_id)
    if limits.max_concurrent is not None:
        running = budgets.in_flight(session, caller.key_id)
        starting = sum(1 for new in new_jobs if new.answer is None)  # answered: never in flight
        if running + starting > limits.max_concurrent:
            policy = f'"concurrent";q={limits.max_concurrent};qu="concurrent-requests"'
            raise RateLimited(
                f"{running} jobs in flight; this key allows {limits.max_concurrent}",
                retry_after_s=1,
                headers={"RateLimit-Policy": policy, "RateLimit": '"concurrent";r=0'},
                policy="concurrent",
            )
    check_budget(session, caller, new_jobs)


def check_budget(session: Session, caller: Caller, new_jobs: list[jobs.NewJob]) -> None:
    """Refuse jobs whose worst-case cost together does not fit what is left of the key's
    budget; the caller holds the key's lock (`budgets.lock_key`)."""
    cost = sum((new.reserved_cost_usd or Decimal(0) for new in new_jobs), Decimal(0))
    check_budget_cost(session, caller, cost, len(new_jobs))


def check_budget_cost(
    session: Session, caller: Caller, cost: Decimal, count: int, written: bool = False
) -> None:
    """Refuse `count` jobs of worst-case `cost` together that do not fit what is left of the
    key's budget; the caller holds the key's lock. `written`: the jobs are rows of this
    transaction already, so the key's reserved spend counts them."""
    limits = caller.limits
    if limits.budget_usd is None or limits.budget_period is None:
        return
    now = datetime.now(UTC)
    start = budgets.period_start(limits.budget_period, now)
    spent = budgets.spend(session, caller.key_id, start)
    reserved = spent.reserved_usd - cost if written else spent.reserved_usd
    if spent.settled_usd + reserved + cost <= limits.budget_usd:
        return
    resets = budgets.period_end(limits.budget_period, now)
    raise BudgetExceeded(
        f"{'this job' if count == 1 else f'these {count} jobs'} "
        f"may cost up to ${usd(cost)}; the key has spent "
        f"${usd(spent.settled_usd + reserved)} of its {ADJECTIVE[limits.budget_period]} "
        f"${usd(limits.budget_usd)} budget",
        budget={
            "budget_usd": usd(limits.budget_usd),
            "period": limits.budget_period,
            "period_start": start.isoformat(),
            "period_resets_at": resets.isoformat(),
            "spent_usd": usd(spent.settled_usd),
            "reserved_usd": usd(reserved),
            "job_worst_case_usd": usd(cost),
        },
    )


def admit(
    caller: Caller,
    new_jobs: list[jobs.NewJob],
    claim: idempotency.Claim | None = None,
    retention: timedelta = timedelta(0),
    charge: Charge | None = None,
) -> Admitted:
    """Create the jobs in one transaction, after checking the key's limits for all of them;
    or answer with the ids an identical earlier request created. `charge` (the rate limits)
    runs only for a request that is not a replay, and is refunded if no job comes of it."""
    charge = charge or NoCharge()
    try:
        if _one_statement(caller, new_jobs, claim):
            charge()
            with statement_scope() as session:
                return _create(session, caller, new_jobs)
        return _admit(caller, new_jobs, claim, retention, charge)
    except Exception:
        charge.refund()
        raise


def _one_statement(
    caller: Caller, new_jobs: list[jobs.NewJob], claim: idempotency.Claim | None
) -> bool:
    """A lone job with nothing to look up or lock first (no idempotency key, no concurrency
    limit or budget) and no answer to record is one INSERT: it needs no transaction around
    it."""
    limits = caller.limits
    return (
        claim is None
        and limits.max_concurrent is None
        and limits.budget_usd is None
        and len(new_jobs) == 1
        and new_jobs[0].answer is None
    )


def _create(session: Session, caller: Caller, new_jobs: list[jobs.NewJob]) -> Admitted:
    if len(new_jobs) == 1:  # one row: its INSERT returns it whole, for the answer
        job = jobs.create_job(session, caller.key_id, new_jobs[0])
        return Admitted([job.id], False, job)
    return Admitted(jobs.create_jobs(session, caller.key_id, new_jobs), False)


def _admit(
    caller: Caller,
    new_jobs: list[jobs.NewJob],
    claim: idempotency.Claim | None,
    retention: timedelta,
    charge: Charge,
) -> Admitted:
    """Limits, rows and the idempotency key in one transaction. The key is looked up under
    its lock, so a twin of a request in flight waits for it and answers with its jobs."""
    with session_scope() as session:
        if claim is not None:
            idempotency.lock(session, caller.key_id, claim.key)
            earlier = idempotency.find(session, caller.key_id, claim, retention)
            if earlier is not None:
                return Admitted(earlier, True)
        charge()
        _check_limits(session, caller, new_jobs)
        admitted = _create(session, caller, new_jobs)
        answered = jobs.record_answers(session, caller.key_id, admitted.ids, new_jobs)
        if answered:
            admitted = Admitted(
                admitted.ids, False, admitted.job, answered, outbox.created_in(session)
            )
        # Under the lock no twin can have recorded the key since `find`; a writer that does not
        # take the lock is the only way here.
        if claim is not None and not idempotency.record(
            session, caller.key_id, claim, admitted.ids, retention
        ):
            raise JobStateConflict(
                f"a request with {idempotency.HEADER} {claim.key!r} is in progress; retry"
            )
        return admitted
