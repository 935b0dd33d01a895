"""The janitor that runs in the leader: no job is ever stranded.

- A running job whose lease ran out goes back to the queue (or fails once it has used
  `max_attempts` claims), long before Redis's visibility timeout would return it. A live
  worker renews its leases in Postgres every heartbeat, so only a worker that stopped (or
  cannot reach Postgres) loses its jobs; Redis losing heartbeat keys moves nothing.
- A queued job whose deadline passed is expired.
- A batch past its completion window has what is left of it cancelled; a batch whose jobs
  have all ended is finalized (`llmq.batches.sweep`), whoever ended them.
- Queued jobs of a model whose circuit breaker is open move to the first fallback of its
  chain whose circuit is not open, as do those that have waited past the model's
  `fallback_after_queue_s` (`llmq.jobs.fallback`); they are published on their new queue.
- Once `retention_days` is set, a chunk of the jobs that finished longer ago than that is
  pruned each pass (`llmq.retention`).
- A queued job with no live message (the API died between commit and publish, Redis lost
  its data, or a worker died holding its message before it claimed the job) is published
  again. This is checked, not guessed (`llmq.broker`): the job is stale and no message in
  the model's queue lists carries its id as its task id, nor does one a worker took less
  than `held_message_timeout_s` ago. A live worker claims a message it took once its batch
  forms, normally within one batch; one held longer (a dead worker's, or one stuck behind a
  long generation) gets a second message rather than waiting for Redis's visibility
  timeout. A duplicate is harmless: claims are conditional UPDATEs fenced by attempt, so
  whichever message comes second finds the job taken and is skipped.

Every state change goes through `llmq.jobs`, which takes rows with SKIP LOCKED; messages are
published only after the transaction commits, ended jobs announced through `llmq.announce`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from celery import Celery

from llmq import breakers, fallbacks, job_queries, jobs, metrics, outbox, retention
from llmq.announce import Announcer, Committed
from llmq.batches import sweep as batches
from llmq.broker import held_since, waiting_task_ids
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.files import file_store
from llmq.queues import (
    declare_queue,
    publish_generate,
    queue_keys,
    waiting_count,
)
from llmq.settings import Settings

log = logging.getLogger("llmq.sweeper")


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    fell_back: list[str] = field(default_factory=list)
    batches_expired: list[str] = field(default_factory=list)
    batches_finalized: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

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
        self.announcer = Announcer.for_settings(settings, client, celery)
        self.store = file_store(settings)

    def sweep(self) -> SweepReport:
        report = SweepReport()
        self._requeue_orphans(report)
        self._expire(report)
        self._fall_back(report)
        self._republish_lost(report)
        report.batches_expired += batches.expire_due(self.announcer)
        report.batches_finalized += batches.finalize_ready(self.store, self.announcer)
        self._prune(report)
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
                publish_generate(self.celery, job.message())
            except Exception:  # the next sweep publishes it: it is queued and stale
                log.exception("could not publish job %s again", job.id)

    def _requeue_orphans(self, report: SweepReport) -> None:
        with session_scope() as session:
            requeued, failed = jobs.requeue_orphans(
                session, self.settings.max_attempts, self.models
            )
            committed = Committed([str(j.id) for j in failed], outbox.created_in(session),
                                  unstreamed={str(j.id) for j in failed if j.batch})  # fmt: skip
        self._publish(requeued)
        self.announcer.announce(committed)
        report.requeued += [str(j.id) for j in requeued]
        report.failed += [str(j.id) for j in failed]

    def _expire(self, report: SweepReport) -> None:
        with session_scope() as session:
            expired = jobs.expire_queued(session, self.models)
            committed = Committed([str(j.id) for j in expired], outbox.created_in(session),
                                  unstreamed={str(j.id) for j in expired if j.batch})  # fmt: skip
        self.announcer.announce(committed)
        report.expired += committed.ended

    def _fall_back(self, report: SweepReport) -> None:
        catalog = get_catalog()
        specs = [
            catalog.get(name)
            for name in (self.models or catalog.names())
            if name in catalog and catalog.get(name).fallbacks
        ]
        if not specs:
            return
        names = sorted({m for spec in specs for m in fallbacks.chain(catalog, spec.name)})
        states = breakers.read_states(
            self.redis, self.settings.redis_prefix, [catalog.get(n) for n in names]
        )
        with session_scope() as session:
            activity = job_queries.activity_by_model(session, [spec.name for spec in specs])
        for spec in specs:
            oldest = activity.get(spec.name, job_queries.IDLE).oldest_queued_s
            if oldest is None:
                continue
            chain = fallbacks.chain(catalog, spec.name)
            admitted = states.get(spec.name) != "open"
            to, reason = fallbacks.at_submit(
                chain, admitted, oldest, spec.fallback_after_queue_s, states
            )
            if reason is None:
                continue
            waited = None
            if reason == fallbacks.QUEUE_AGE:
                waited = timedelta(seconds=spec.fallback_after_queue_s or 0)
            with session_scope() as session:
                moved = jobs.move_queued(session, spec.name, to, reason, waited)
            self._publish(moved)
            if moved:
                metrics.FALLBACKS.labels(spec.name, to, reason).inc(len(moved))
            report.fell_back += [str(j.id) for j in moved]

    def _prune(self, report: SweepReport) -> None:
        """One chunk of retention a pass: old jobs are pruned as they come of age, in
        bounded transactions (`llmq prune` does a backlog at once)."""
        if self.settings.retention_days <= 0:
            return
        older_than = timedelta(days=self.settings.retention_days)
        with session_scope() as session:
            report.pruned += [str(i) for i in retention.prune_chunk(session, older_than)]

    def _republish_lost(self, report: SweepReport) -> None:
        prefix = self.settings.redis_prefix
        older_than = timedelta(seconds=self.settings.republish_after_s)
        with session_scope() as session:
            stale = job_queries.stale_queued(session, older_than, self.models)
        if not stale:
            return
        held = held_since(self.redis, prefix, time.time() - self.settings.held_message_timeout_s)
        lost = []
        for model, ids in stale.items():
            if waiting_count(self.redis, model, prefix) > self.settings.sweeper_scan_limit:
                continue  # too long to read now; checked again once it is shorter
            queued = waiting_task_ids(self.redis, queue_keys(model, prefix))
            lost += [i for i in ids if str(i) not in queued and str(i) not in held]
        if not lost:
            return
        with session_scope() as session:
            moved = jobs.mark_republished(session, lost, older_than)
        self._publish(moved)
        report.republished += [str(j.id) for j in moved]
