"""The feeder, run by the scheduler's leader every `LLMQ_FEEDER_INTERVAL_S` (and in each
step): it moves jobs from each model's backlog in Postgres to its Redis queue, only as deep as
the pool can use.

For each model: bound = `LLMQ_QUEUE_DEPTH_PER_WORKER` batches per live worker, at least one
batch (`llmq.backlog.queue_bound`); room = bound - messages waiting. The feeder reads each
key's next `room` backlog jobs (SKIP LOCKED), lets the policy (`llmq.backlog.pick`) choose,
marks the chosen ones published in one transaction, commits, then publishes them (batch lines
on the batch lane). It also writes the bound to Redis, where the API reads it to decide
whether an interactive submit goes straight to the queue, and the keys whose interactive jobs
it left waiting: past their fair share, their next submits wait in the backlog behind them.

Before feeding, it answers a batch's repeated lines whose leader has ended, or sends one of
them to the backlog to run when the leader's end answers nothing (`llmq.jobs.dedup`).

Postgres is the truth, so a feeder that dies loses nothing: before the commit the jobs are
still in the backlog; after it, a job whose message never went out is found by the
sweeper's lost-message check and published again. A duplicate message is harmless (claims
are conditional). Fair share counts the feeder's own picks per model (`served`), which a new
leader starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import redis
from celery import Celery

from llmq import backlog, jobs, keys, metrics, outbox
from llmq.announce import Announcer, Committed
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.pools import Backlog, PoolObservation
from llmq.queues import bound_key, held_key, publish_generate_many
from llmq.settings import Settings

log = logging.getLogger("llmq.feeder")


class Feeder:
    def __init__(
        self, settings: Settings, catalog: Catalog, client: redis.Redis, celery: Celery
    ) -> None:
        self.settings, self.catalog, self.redis, self.celery = settings, catalog, client, celery
        self.served: dict[str, dict[Hashable, float]] = {}  # model -> key -> recent picks
        self.announcer = Announcer.for_settings(settings, client, celery)

    def feed(
        self, seen: Mapping[str, Backlog | PoolObservation], bound_ttl_s: int
    ) -> dict[str, int]:
        """One round over every model (`seen`: each one's waiting messages and live workers);
        returns how many jobs each had published."""
        try:
            self.resolve_followers(list(seen))
        except Exception:  # the next round tries again; feeding goes on
            log.exception("could not resolve repeated batch lines")
        fed = {}
        for model, obs in seen.items():
            spec = self.catalog.get(model)
            bound = backlog.queue_bound(
                obs.workers, spec.max_batch_size, self.settings.queue_depth_per_worker
            )
            self.redis.set(bound_key(self.settings.redis_prefix, model), bound, ex=bound_ttl_s)
            if bound - obs.waiting > 0:
                try:
                    fed[model] = self.feed_model(model, bound - obs.waiting, bound_ttl_s)
                except Exception:  # one model's failure skips its round; the others go on
                    log.exception("could not feed %s", model)
        return fed

    def resolve_followers(self, models: list[str]) -> jobs.Resolved:
        """End the followers whose leader answered them, or promote one to run; after the
        commit, tell their waiters, send their webhooks and ask for their batches' ends."""
        with session_scope() as session:
            resolved = jobs.resolve_followers(session, self.catalog, models)
            deliveries = outbox.created_in(session)
        if resolved.ended:
            self.announcer.announce(
                Committed(
                    ended=[str(i) for i in resolved.ended],
                    deliveries=deliveries,
                    batches=resolved.batches,
                    unstreamed={str(i) for i in resolved.ended},
                )
            )
        return resolved

    def feed_model(self, model: str, room: int, held_ttl_s: int = 5) -> int:
        """Publish up to `room` of the model's backlog jobs, in the policy's order, and tell
        the API which keys' interactive jobs it left waiting (`llmq.queues.held_key`)."""
        served = self.served.get(model, {})
        with session_scope() as session:
            # One more than fits per key, so a key with jobs left over shows it.
            candidates = jobs.backlog_candidates(session, model, room + 1)
            waiting = [c.key for c in candidates]
            weights = keys.fair_share_weights(session, list(dict.fromkeys(waiting)))
            chosen = backlog.pick(
                candidates, room, served, weights, self.settings.backlog_deadline_bucket_s
            )
            moved = jobs.take_from_backlog(session, [c.id for c in chosen])
        self.hold(model, backlog.held_keys(candidates, chosen), held_ttl_s)
        if candidates:
            self.served[model] = backlog.served_after(served, waiting, chosen, weights)
        else:
            self.served.pop(model, None)  # an empty backlog: its keys start afresh
        if moved:
            self.publish(moved)
            metrics.BACKLOG_FED.labels(model).inc(len(moved))
        return len(moved)

    def hold(self, model: str, held: set, ttl_s: int) -> None:
        """Replace the model's held keys; a Redis failure leaves the old set to expire."""
        key = held_key(self.settings.redis_prefix, model)
        try:
            with self.redis.pipeline() as pipe:
                pipe.delete(key)
                if held:
                    pipe.sadd(key, *(str(k) for k in held))
                    pipe.expire(key, ttl_s)
                pipe.execute()
        except redis.RedisError:
            log.warning("could not write the held keys of %s", model, exc_info=True)

    def publish(self, moved: list[jobs.Moved]) -> None:
        """After the commit: a failure leaves the jobs to the sweeper's lost-message check."""
        try:
            publish_generate_many(self.celery, [m.message() for m in moved])
        except Exception:
            log.exception("could not publish %d job(s); the sweeper will", len(moved))
