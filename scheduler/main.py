"""The scheduler loop: observe every pool and its deadlines, decide, act through the backend,
feed each model's queue from its backlog (`scheduler.feeder`), sweep.

Every scheduler process runs this loop, but only the holder of the leader lock acts; the
others wait to take over. Each step the leader writes what it saw and decided to a Redis hash
(read by `GET /v1/models` and `llmq status`) and every change of a pool's size to
`scaling_events`. A batch whose deadline its pool cannot meet even at `max_replicas` gets an
expiring Redis key (`events.at_risk_key`) the batch object reports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery

from llmq import events, job_queries, metrics
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.models import ScalingEvent
from llmq.pools import PoolObservation, backlogs, observe_pools
from llmq.settings import Settings
from scheduler.backends import Backend
from scheduler.feeder import Feeder
from scheduler.leader import LeaderLock, lock_key
from scheduler.policy import (
    DeadlineWork,
    Decision,
    Knobs,
    Memory,
    Pool,
    at_risk,
    deadline_replicas,
    decide,
    share_gpus,
)
from scheduler.sweeper import Sweeper

log = logging.getLogger("llmq.scheduler")


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        backend: Backend,
        celery: Celery,
        models: list[str] | None = None,
        gpu_budget: int | None = None,
    ):
        """`gpu_budget`: GPUs the backend hands out, one per GPU worker (None: the backend's
        own scheduler places GPU pods, as Kubernetes does)."""
        self.settings, self.catalog, self.backend = settings, catalog, backend
        self.models = models or catalog.names()
        self.gpu_budget = gpu_budget
        self.redis = redis.Redis.from_url(settings.redis_url)
        # Schedulers of the same pools share one lock; the sweeper looks after those pools.
        self.lock = LeaderLock(settings.database_url, lock_key(self.models))
        self.sweeper = Sweeper(settings, self.redis, celery, self.models)
        self.feeder = Feeder(settings, catalog, self.redis, celery)
        self.knobs = Knobs(
            scale_down_stabilization_s=settings.scale_down_stabilization_s,
            scale_to_zero_idle_s=settings.scale_to_zero_idle_s,
            max_step=settings.max_scale_step,
        )
        self.memory: dict[str, Memory] = {}
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._last_sweep = 0.0

    def uses_gpu(self, model: str) -> bool:
        check = getattr(self.backend, "uses_gpu", None)
        return bool(check(model)) if check is not None else False

    def step(self) -> list[Decision]:
        """One round as leader: tidy the backend, observe, decide, act, record, feed, sweep."""
        killed = self.backend.tick()
        window = timedelta(seconds=self.settings.throughput_window_s)
        with session_scope() as session:
            seen = observe_pools(session, self.redis, self.settings.redis_prefix, self.models)
            due = job_queries.due_work(session, self.models)
            rates = job_queries.tokens_per_s_per_replica(session, self.models, window)
        work = {m: [DeadlineWork(left, tokens, b) for b, left, tokens in due.get(m, [])]
                for m in self.models}  # fmt: skip
        now = time.monotonic()
        pools = []
        for model in self.models:
            try:
                pools.append(
                    self._pool(seen[model], deadline_replicas(work[model], rates.get(model)))
                )
            except Exception:  # one broken pool (say, a missing Deployment) skips a round
                log.exception("cannot read the pool of %s", model)
        decisions = [decide(p, self.memory.get(p.model, Memory()), now, self.knobs) for p in pools]
        if self.gpu_budget is not None:
            decisions = share_gpus(decisions, pools, self.gpu_budget)
        for pool, decision in zip(pools, decisions, strict=True):
            self.memory[pool.model] = decision.memory
            if not decision.changes:
                continue
            try:
                self.backend.scale(pool.model, decision.desired)
            except Exception:  # the next step tries again; the other pools go on
                log.exception("could not scale %s to %d", pool.model, decision.desired)
                continue
            if self.backend.current(pool.model) != decision.current:
                self._record(pool, decision)  # a backend that held back records nothing
        self._publish(seen, decisions)
        self._mark_at_risk(pools, work, rates)
        self.feeder.feed(seen, self.lease_ttl_s)
        if killed or now - self._last_sweep >= self.settings.sweeper_interval_s:
            self._last_sweep = now
            self.sweeper.sweep()
        return decisions

    def _pool(self, seen: PoolObservation, for_deadlines: int) -> Pool:
        spec = self.catalog.get(seen.model)
        return Pool(
            model=seen.model,
            waiting=seen.waiting + seen.backlog,  # work held in Postgres needs replicas too
            in_flight=seen.in_flight,
            current=self.backend.current(seen.model),
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target_backlog_per_replica=spec.target_backlog_per_replica,
            uses_gpu=self.uses_gpu(seen.model),
            deadline_replicas=for_deadlines,
        )

    def _mark_at_risk(
        self, pools: list[Pool], work: dict[str, list[DeadlineWork]], rates: dict[str, float]
    ) -> None:
        """Renew the at-risk key of each batch its pool cannot finish in time, and the gauges."""
        ttl_s = max(30, int(self.settings.scheduler_interval_s * 5))
        with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                batches = at_risk(work[pool.model], rates.get(pool.model), pool.max_replicas)
                for batch_id in batches:
                    record = {"model": pool.model, "replicas_needed": pool.deadline_replicas,
                              "max_replicas": pool.max_replicas}  # fmt: skip
                    key = events.at_risk_key(self.settings.redis_prefix, batch_id)
                    pipe.set(key, json.dumps(record), ex=ttl_s)
                metrics.BATCHES_AT_RISK.labels(pool.model).set(len(batches))
                metrics.POOL_DEADLINE_REPLICAS.labels(pool.model).set(pool.deadline_replicas)
            pipe.execute()

    def _record(self, pool: Pool, decision: Decision) -> None:
        log.info(
            "%s: %d -> %d replicas (%s; waiting %d, in flight %d)",
            pool.model, decision.current, decision.desired, decision.reason,
            pool.waiting, pool.in_flight,
        )  # fmt: skip
        with session_scope() as session:
            session.add(
                ScalingEvent(
                    model=pool.model,
                    from_replicas=decision.current,
                    to_replicas=decision.desired,
                    reason=decision.reason,
                    waiting=pool.waiting,
                    in_flight=pool.in_flight,
                    backend=self.backend.name,
                )
            )
        direction = "up" if decision.desired > decision.current else "down"
        metrics.SCALING_EVENTS.labels(pool.model, direction).inc()

    def _publish(self, seen: dict[str, PoolObservation], decisions: list[Decision]) -> None:
        """Write each pool's state for `GET /v1/models` and `llmq status`, and the gauges."""
        stamp = datetime.now(UTC).isoformat()
        state = {}
        for d in decisions:
            obs = seen[d.model]
            actual = self._running(d.model)
            state[d.model] = json.dumps(
                {
                    "desired_replicas": d.desired,
                    "actual_replicas": actual,
                    "reason": d.reason,
                    "waiting": obs.waiting,
                    "backlog": obs.backlog,
                    "in_flight": obs.in_flight,
                    "workers": obs.workers,
                    "oldest_wait_s": obs.oldest_wait_s,
                    "backend": self.backend.name,
                    "updated_at": stamp,
                }
            )
            metrics.DESIRED_REPLICAS.labels(d.model).set(d.desired)
            metrics.ACTUAL_REPLICAS.labels(d.model).set(actual)
            metrics.POOL_WAITING.labels(d.model).set(obs.waiting)
            metrics.POOL_IN_FLIGHT.labels(d.model).set(obs.in_flight)
            metrics.POOL_BACKLOG.labels(d.model).set(obs.backlog)
        if state:
            self.redis.hset(events.pools_key(self.settings.redis_prefix), mapping=state)

    def _running(self, model: str) -> int:
        running = getattr(self.backend, "running", None)
        return int(running(model)) if running else self.backend.current(model)

    def feed(self) -> dict[str, int]:
        """Refill the queues from the backlog between steps: Redis's half of the observation
        is all the feeder needs."""
        queues = backlogs(self.redis, self.settings.redis_prefix, self.models)
        return self.feeder.feed(queues, self.lease_ttl_s)

    @property
    def lease_ttl_s(self) -> int:
        """How long what the leader writes to Redis outlives it (its name, the queue bounds)."""
        return max(2, int(self.settings.scheduler_interval_s * 5))

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; act only while holding the leader lock."""
        interval = self.settings.scheduler_interval_s
        ttl = self.lease_ttl_s
        next_step = 0.0
        try:
            while not stop.is_set():
                if self.lock.check():
                    metrics.IS_LEADER.set(1)
                    try:
                        if time.monotonic() >= next_step:
                            next_step = time.monotonic() + interval
                            self.redis.set(
                                events.leader_key(self.settings.redis_prefix, self.models),
                                self.identity,
                                ex=ttl,
                            )
                            self.step()
                        else:
                            self.feed()
                    except Exception:  # a failed round must not end the loop
                        log.exception("scheduler step failed")
                else:
                    metrics.IS_LEADER.set(0)
                stop.wait(min(interval, self.settings.feeder_interval_s))
        finally:
            if self.lock.is_leader:
                self.backend.close()
            self.lock.release()


def build(
    settings: Settings, backend: str | None = None, models: list[str] | None = None
) -> Scheduler:
    """A scheduler with the backend the settings (or `backend`) name."""
    from llmq.catalog import get_catalog
    from llmq.queues import make_celery

    catalog = get_catalog()
    models = models or catalog.names()
    for model in models:
        catalog.get(model)  # an unknown name fails here, with the catalog's message
    celery = make_celery(settings)
    kind = backend or settings.scheduler_backend
    if kind == "kubernetes":
        from scheduler.backends.kubernetes import KubernetesBackend

        return Scheduler(settings, catalog, KubernetesBackend(settings), celery, models)
    from scheduler.backends.local import LocalBackend, count_gpus

    gpus = settings.gpu_count if settings.gpu_count is not None else count_gpus()
    client = redis.Redis.from_url(settings.redis_url)
    local = LocalBackend(settings, catalog, models, client, celery, gpu_count=gpus)
    return Scheduler(settings, catalog, local, celery, models, gpu_budget=gpus)
