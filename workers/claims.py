"""The claims a worker holds, so its heartbeat can keep their leases in Postgres alive.

A claim's lease is short (`job_lease_s`); the heartbeat thread renews every claim in hand in
one UPDATE per beat. Postgres, not Redis, is what tells a live worker from a dead one: when
the worker stops renewing, its leases run out and the sweeper takes the jobs back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from llmq import jobs
from llmq.db import session_scope
from llmq.models import Job

log = logging.getLogger(__name__)


@dataclass
class _Claim:
    job: Job
    claimed_at: float  # time.monotonic()


class Claims:
    def __init__(self, node: str, lease: timedelta, max_hold_s: float, model: str | None = None):
        """`max_hold_s`: longest a claim is renewed; past it the engine must be hung, and the
        lease runs out so the sweeper takes the job back. `model`: claim only its jobs."""
        self.node, self.lease, self.max_hold_s = node, lease, max_hold_s
        self.model = model
        self._held: dict[uuid.UUID, _Claim] = {}
        self._lock = threading.Lock()

    def take(self, job_ids: list[uuid.UUID]) -> list[Job]:
        """Claim what can be claimed (one conditional UPDATE) and hold it until let go."""
        with session_scope() as session:
            claimed = jobs.claim_jobs(session, job_ids, self.node, self.lease, self.model)
        now = time.monotonic()
        with self._lock:
            for job in claimed:
                self._held[job.id] = _Claim(job, now)
        return claimed

    def let_go(self, done_with: list[Job]) -> None:
        """Stop renewing these claims (written, released or abandoned)."""
        with self._lock:
            for job in done_with:
                claim = self._held.get(job.id)
                if claim is not None and claim.job.attempts == job.attempts:
                    del self._held[job.id]

    def in_hand(self) -> list[Job]:
        with self._lock:
            return [claim.job for claim in self._held.values()]

    def renew(self) -> None:
        """Extend the lease of every claim in hand, in one UPDATE fenced by attempt."""
        oldest = time.monotonic() - self.max_hold_s
        with self._lock:
            claims = [
                (c.job.id, c.job.attempts) for c in self._held.values() if c.claimed_at > oldest
            ]
        if not claims:
            return
        try:
            with session_scope() as session:
                jobs.renew_leases(session, claims, self.node, self.lease)
        except Exception:  # the next beat tries again; a lease outlasts a missed beat
            log.warning("could not renew the leases of %d jobs", len(claims), exc_info=True)
