"""The janitor that runs in the leader: no job is ever stranded.

- A running job whose lease ran out goes back to the queue (or fails once it has used
  `max_attempts` claims), long before Redis's visibility timeout would return it. A live
  worker renews its leases in Postgres every heartbeat, so only a worker that stopped (or
  cannot reach Postgres) loses its jobs; Redis losing heartbeat keys moves nothing.
- A queued job whose deadline passed is expired.
- A queued job with no message (the API died between commit and publish, or Redis lost its
  data) is published again. "No message" is checked, not guessed: the job is stale and no
  message in the model's queue lists or among those workers hold (kombu's `unacked` hash)
  carries its id as its task id. A duplicate that slips through a race is harmless: claims are idempotent.

Every state change goes through `llmq.jobs`, which takes rows with SKIP LOCKED; messages are
published only after the transaction commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
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


def task_id(message: object) -> str | None:
    """The task id a decoded kombu message carries (Celery's protocol 2: `headers.id`, also
    in `properties.correlation_id`); None for anything else. Only these fields count: a body
    or argument that mentions some id is not that job's message."""
    if not isinstance(message, dict):
        return None
    headers, properties = message.get("headers"), message.get("properties")
    found = headers.get("id") if isinstance(headers, dict) else None
    if found is None and isinstance(properties, dict):
        found = properties.get("correlation_id")
    return found if isinstance(found, str) else None


def _decoded(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def queued_task_ids(raws: Iterable[bytes]) -> set[str]:
    """Task ids of the messages in queue lists, as a set: one parse each, O(1) per lookup."""
    return {i for i in (task_id(_decoded(raw)) for raw in raws) if i is not None}


def held_task_ids(values: Iterable[bytes]) -> set[str]:
    """Task ids of the `unacked` hash's entries, which kombu stores as [message, exchange,
    routing key]."""
    entries = (_decoded(value) for value in values)
    messages = (e[0] if isinstance(e, list) and e else None for e in entries)
    return {i for i in map(task_id, messages) if i is not None}


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
        with session_scope() as session:
            requeued, failed = jobs.requeue_orphans(
                session, self.settings.max_attempts, self.models
            )
            deliveries = outbox.created_in(session)
        self._publish(requeued)
        events.publish_done(self.redis, self.settings.redis_prefix, [str(j.id) for j in failed])
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
        held = held_task_ids(self.redis.hvals(prefix + UNACKED_KEY))
        lost = []
        for model, ids in stale.items():
            if waiting_count(self.redis, model, prefix) > self.settings.sweeper_scan_limit:
                continue  # too long to read now; checked again once it is shorter
            with self.redis.pipeline(transaction=False) as pipe:
                for key in queue_keys(model, prefix):
                    pipe.lrange(key, 0, -1)
                queued = queued_task_ids(raw for items in pipe.execute() for raw in items)
            lost += [i for i in ids if str(i) not in queued and str(i) not in held]
        if not lost:
            return
        with session_scope() as session:
            moved = jobs.mark_republished(session, lost, older_than)
        self._publish(moved)
        report.republished += [str(j.id) for j in moved]
