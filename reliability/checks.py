"""Reads the stack's state (Postgres, `GET /v1/usage`, the receiver) and applies the
invariants; keeps what every round found, by job, so a problem that lasts is counted once."""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal

import httpx
import sqlalchemy as sa

from llmq.catalog import load_catalog
from llmq.models import FINAL_STATUSES
from llmq.outbox import delivery_id
from reliability import invariants as inv
from reliability.receiver import Receiver
from reliability.stack import DATABASE, Stack
from reliability.traffic import Submitted

_JOBS = sa.text(
    "SELECT id, api_key_id, model, status, prompt_tokens, completion_tokens, output_text, "
    "finished_at, webhook_url, error->>'code' AS error_code, attempts FROM jobs"
)
_ACTIVE = sa.text("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
_OWED = sa.text("SELECT id FROM jobs WHERE webhook_url IS NOT NULL")
_LEDGER = sa.text(
    "SELECT job_id, api_key_id, model, prompt_tokens, completion_tokens, cost_usd, created_at "
    "FROM usage_ledger"
)


class Checker:
    def __init__(self, stack: Stack, keys: dict[str, dict], receiver: Receiver):
        self.stack, self.keys, self.receiver = stack, keys, receiver
        self.engine = sa.create_engine(
            stack.postgres.url(DATABASE), pool_pre_ping=True, connect_args={"connect_timeout": 3}
        )
        catalog = load_catalog(stack.catalog)
        self.prices = {
            name: (catalog.get(name).price_input_per_mtok_usd,
                   catalog.get(name).price_output_per_mtok_usd)
            for name in catalog.names()
        }  # fmt: skip
        self.budgets = {
            uuid.UUID(k["id"]): Decimal(k["budget_usd"]) for k in keys.values() if k["budget_usd"]
        }
        self.accepted: set[str] = set()
        self.final_results: dict[uuid.UUID, tuple] = {}  # first result seen of each final job
        self.violations: dict[str, dict[str, str]] = {}  # kind -> {job or key: why}
        self.jobs: dict[uuid.UUID, inv.JobRow] = {}

    def add(self, submitted: Submitted) -> None:
        self.accepted |= set(submitted.accepted)

    def _read(self) -> tuple[dict[uuid.UUID, inv.JobRow], list[inv.LedgerRow]]:
        with self.engine.connect() as conn:
            jobs = {r.id: inv.JobRow(**r._mapping) for r in conn.execute(_JOBS)}
            ledger = [inv.LedgerRow(**r._mapping) for r in conn.execute(_LEDGER)]
        return jobs, ledger

    def settled(self) -> bool:
        """Every job final and every webhook they owe received, leaving out jobs and events
        an earlier round already counted (they would only hold every later round up). Read
        cheaply: it is polled."""
        stuck = set(self.violations.get("stuck", {}))
        missing = set(self.violations.get("webhooks_missing", {}))
        with self.engine.connect() as conn:
            if {str(i) for i in conn.scalars(_ACTIVE)} - stuck:
                return False
            owed = {delivery_id(i) for i in conn.scalars(_OWED)} - missing
        received, _, _ = self.receiver.snapshot()
        return owed <= received.keys()

    def _usage(self) -> dict[uuid.UUID | None, dict]:
        """`GET /v1/usage` totals of each key (None: the admin's view of every key)."""
        out: dict[uuid.UUID | None, dict] = {}
        with httpx.Client(base_url=self.stack.api_url, timeout=30) as client:
            for name, key in self.keys.items():
                answer = client.get("/v1/usage", headers={"Authorization": f"Bearer {key['key']}"})
                answer.raise_for_status()
                out[None if name == "admin" else uuid.UUID(key["id"])] = answer.json()["total"]
        return out

    def check(self) -> dict[str, list[str]]:
        """Apply every invariant now; returns the problems not seen in an earlier round."""
        jobs, ledger = self._read()
        self.jobs = jobs
        received, statuses, bodies = self.receiver.snapshot()
        mismatches, doubles = inv.ledger_problems(jobs, ledger, self.prices)
        doubles += inv.changed_results(self.final_results, jobs)
        for msg_id, status in statuses.items():
            job = jobs.get(uuid.UUID(msg_id.removeprefix("msg_")))
            if job is not None and job.status != status:
                doubles.append(f"{job.id}: webhook said {status}, the job is {job.status}")
        doubles += [f"{i}: {n} different bodies for one event" for i, n in bodies.items() if n > 1]
        try:
            mismatches += inv.usage_problems(ledger, self._usage())
        except httpx.HTTPError as exc:
            mismatches.append(f"usage: GET /v1/usage failed: {exc!r}")
        found = {
            "lost": inv.lost_jobs(self.accepted, jobs),
            "stuck": inv.stuck_jobs(jobs),
            "double_finishes": doubles,
            "ledger_mismatches": mismatches,
            "webhooks_missing": inv.missing_webhooks(jobs, received),
            "webhooks_unexpected": inv.unexpected_webhooks(jobs, received),
            "budget_overruns": inv.budget_overruns(ledger, self.budgets),
            "signatures_rejected": [f"{self.receiver.rejected} deliveries"]
            if self.receiver.rejected
            else [],
        }
        for job in jobs.values():
            before = self.final_results.get(job.id)
            if job.status in FINAL_STATUSES and (
                before is None or inv.allowed_change(before, job.result())
            ):
                self.final_results[job.id] = job.result()
        new = {}
        for kind, lines in found.items():
            seen = self.violations.setdefault(kind, {})
            fresh = [line for line in lines if _subject(line) not in seen]
            for line in fresh:
                seen[_subject(line)] = line
            new[kind] = fresh[:20]
        return new

    def totals(self) -> dict[str, int]:
        counts = {kind: len(v) for kind, v in self.violations.items()}
        counts["signatures_rejected"] = self.receiver.rejected
        return counts

    def statuses(self) -> Counter:
        return Counter(j.status for j in self.jobs.values())

    def redeliveries(self) -> tuple[int, int]:
        """(jobs claimed more than once, jobs failed because their claims ran out): the cost
        of at-least-once delivery, and a sign of requeues that were not needed."""
        again = sum(1 for j in self.jobs.values() if j.attempts > 1)
        spent = sum(1 for j in self.jobs.values() if j.error_code == "max_attempts_exceeded")
        return again, spent

    def deliveries(self) -> tuple[int, int]:
        received, _, _ = self.receiver.snapshot()
        return len(received), sum(received.values())


def _subject(line: str) -> str:
    """What a problem is about (a job id, a key), so it is counted once across rounds."""
    return line.split(":", 1)[0]
