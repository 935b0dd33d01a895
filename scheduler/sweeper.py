"""The janitor that runs in the leader: no job is ever stranded.

- A running job whose worker's heartbeat expired goes back to the queue (or fails once it has
  used `max_attempts` claims), long before Redis's visibility timeout would return it.
- A queued job whose deadline passed is expired.
- A queued job with no message (the API died between commit and publish, or Redis lost its
  data) is published again. "No message" is checked, not guessed: the job is stale and its id
  is neither in the model's queue lists nor among the messages workers hold (kombu's
  `unacked` hash). A duplicate that slips through a race is harmless: claims are idempotent.

Every state change goes through `llmq.jobs`, which takes rows with SKIP LOCKED; messages are
published only after the transaction commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from celery import Celery

from llmq import events, jobs, metrics, outbox
from llmq.db import session_scope
from llmq.queues import (
    declare_queue,
    publish_generate,
    publish_webhooks,
    queue_keys,
    waiting_count,
)
from llmq.settings import Settings

log = logging.getLogger("llmq.sweeper")

UNACKED_KEY = "unacked"  # kombu's Redis transport: messages delivered and not yet acked


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        celery: Celery,
        models: list[str] | None = None,
    ):
        """`models`: the pools this sweeper looks after (None: every model)."""
        self.settings, self.redis, self.celery, self.models = settings, client, celery, models

    def sweep(self) -> SweepReport:
        report = SweepReport()
        self._requeue_orphans(report)
        self._expire(report)
        self._republish_lost(report)
        for action, n in report.counts().items():
            if n:
                metrics.SWEEPER_ACTIONS.labels(action).inc(n)
                log.info("sweeper %s %d job(s)", action, n)
        return report

    def _publish(self, moved: list[jobs.Moved]) -> None:
        for model in {job.model for job in moved}:
            try:
                declare_queue(self.celery, model)
            except Exception:
                log.exception("could not declare the queue of %s", model)
        for job in moved:
            try:
                publish_generate(self.celery, str(job.id), job.model, job.priority)
            except Exception:  # the next sweep publishes it: it is queued and stale
                log.exception("could not publish job %s again", job.id)

    def _requeue_orphans(self, report: SweepReport) -> None:
        prefix = self.settings.redis_prefix
        with session_scope() as session:
            holders = jobs.running_workers(session, self.models)
        dead = []
        if holders:
            with self.redis.pipeline(transaction=False) as pipe:
                for model, node in holders:
                    pipe.exists(events.worker_key(prefix, model, node))
                alive = pipe.execute()
            dead = [h for h, ok in zip(holders, alive, strict=True) if not ok]
        with session_scope() as session:
            requeued, failed = jobs.requeue_orphans(
                session, dead, self.settings.max_attempts, self.models
            )
            deliveries = outbox.created_in(session)
        self._publish(requeued)
        events.publish_done(self.redis, prefix, [str(j.id) for j in failed])
        publish_webhooks(self.celery, deliveries)
        report.requeued += [str(j.id) for j in requeued]
        report.failed += [str(j.id) for j in failed]

    def _expire(self, report: SweepReport) -> None:
        with session_scope() as session:
            expired = jobs.expire_queued(session, self.models)
            deliveries = outbox.created_in(session)
        events.publish_done(self.redis, self.settings.redis_prefix, [str(j.id) for j in expired])
        publish_webhooks(self.celery, deliveries)
        report.expired += [str(j.id) for j in expired]

    def _republish_lost(self, report: SweepReport) -> None:
        prefix = self.settings.redis_prefix
        older_than = timedelta(seconds=self.settings.republish_after_s)
        with session_scope() as session:
            stale = jobs.stale_queued(session, older_than, self.models)
        if not stale:
            return
        held = b"".join(self.redis.hvals(prefix + UNACKED_KEY))
        lost = []
        for model, ids in stale.items():
            if waiting_count(self.redis, model, prefix) > self.settings.sweeper_scan_limit:
                continue  # too long to read now; checked again once it is shorter
            with self.redis.pipeline(transaction=False) as pipe:
                for key in queue_keys(model, prefix):
                    pipe.lrange(key, 0, -1)
                queued = b"".join(b"".join(items) for items in pipe.execute())
            lost += [
                i for i in ids if str(i).encode() not in queued and str(i).encode() not in held
            ]
        if not lost:
            return
        with session_scope() as session:
            moved = jobs.mark_republished(session, lost, older_than)
        self._publish(moved)
        report.republished += [str(j.id) for j in moved]
