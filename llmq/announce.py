"""Commit, then announce: the effects that follow a transaction that ended jobs.

Whoever ends jobs (a worker writing a batch, the cancel route, the sweeper failing or
expiring jobs) commits first and then hands what it committed to `Announcer.announce`:
workers are told to stop cancelled jobs, waiters (long-poll, SSE) that the jobs ended, the
webhook sender which outbox rows to deliver now, batches whose jobs ended to finalize
if that was their last, jobs moved to a fallback model are published on its queue, each key's
token rate is corrected by what its jobs really used, determined jobs' answers are kept in the
exact cache (`llmq.cache`), and the finished jobs are counted.

Every effect comes after the commit and none may undo it, so each is best-effort: a failure
is logged and the next effect still runs. What is lost is recovered elsewhere: the outbox
sweep delivers webhooks, waiters re-read the job row, a token rate heals within its window, a
lost cache entry is a later miss.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from celery import Celery

from llmq import events, metrics, ratelimit
from llmq.cache import Answer, AnswerCache
from llmq.jobs import Outcome
from llmq.queues import Message, publish_finalize, publish_generate_many, publish_webhooks
from llmq.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Committed:
    """What one committed transaction ended, and what it asks to follow."""

    ended: list[str] = field(default_factory=list)  # job ids now in a final state
    deliveries: list[str] = field(default_factory=list)  # webhook outbox rows it wrote
    stop: list[str] = field(default_factory=list)  # jobs a worker may still be running
    token_deltas: dict[uuid.UUID, int] = field(default_factory=dict)  # key: used - charged
    outcomes: list[Outcome] = field(default_factory=list)  # written results, to be counted
    model: str = ""  # the model of `outcomes`
    batches: list[str] = field(default_factory=list)  # batches whose jobs these ended
    answers: dict[str, Answer] = field(default_factory=dict)  # exact-cache key: answer to keep
    moved: list[Message] = field(default_factory=list)  # jobs queued again on a fallback
    # model, whose messages are to be published
    unstreamed: set[str] = field(default_factory=set)  # of `ended`, batch lines: no stream


def token_deltas(jobs: Iterable[tuple[uuid.UUID, int | None, int]]) -> dict[uuid.UUID, int]:
    """Per key, tokens used minus tokens charged at submit, from (key, reserved, used) of each
    ended job; a job charged nothing (no reservation) corrects nothing."""
    deltas: dict[uuid.UUID, int] = {}
    for key_id, reserved, used in jobs:
        if reserved is not None and used != reserved:
            deltas[key_id] = deltas.get(key_id, 0) + used - reserved
    return {key_id: delta for key_id, delta in deltas.items() if delta}


class Announcer:
    """The after-commit effects, over the clients of the process that committed."""

    def __init__(
        self,
        client: redis.Redis,
        celery: Celery,
        prefix: str,
        limits: redis.Redis | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        """`limits`: the Redis holding the rate-limit counters (default: `client`); `cache`:
        where answers are kept (None: nothing this process commits is kept)."""
        self.client, self.celery, self.prefix = client, celery, prefix
        self.limits = limits if limits is not None else client
        self.cache = cache

    @classmethod
    def for_settings(cls, settings: Settings, client: redis.Redis, celery: Celery) -> Announcer:
        limits = (
            redis.Redis.from_url(settings.rate_limit_redis_url)
            if settings.rate_limit_redis_url
            else client
        )
        cache = AnswerCache.for_settings(settings, client)
        return cls(client, celery, settings.redis_prefix, limits, cache)

    def announce(self, committed: Committed) -> None:
        if committed.moved:
            self._try("publish jobs moved to a fallback", publish_generate_many, self.celery,
                      committed.moved)  # fmt: skip
        if committed.stop:
            self._try("tell workers of cancels", self._publish_cancels, committed.stop)
        if committed.ended:
            self._try("tell waiters", events.publish_done, self.client, self.prefix,
                      committed.ended, committed.unstreamed)  # fmt: skip
        if committed.deliveries:
            self._try("send webhooks", publish_webhooks, self.celery, committed.deliveries)
        if committed.batches:
            self._try("ask for batches' finalizing", publish_finalize, self.celery,
                      committed.batches)  # fmt: skip
        for key_id, delta in committed.token_deltas.items():
            if not self._try(
                f"correct the token rate of key {key_id}",
                ratelimit.reconcile_tokens, self.limits, self.prefix, key_id, delta,
            ):  # fmt: skip
                metrics.RATE_LIMIT_ERRORS.inc()
        if self.cache is not None:
            for key, answer in committed.answers.items():
                self._try("keep an answer in the exact cache", self.cache.put, key, answer)
        for out in committed.outcomes:
            metrics.record_outcome(committed.model, out)

    def _publish_cancels(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            events.publish_cancel(self.client, self.prefix, job_id)

    @staticmethod
    def _try(what: str, effect, *args) -> bool:
        try:
            effect(*args)
            return True
        except Exception:  # committed already: a lost effect is recovered elsewhere
            log.warning("committed, but could not %s", what, exc_info=True)
            return False
