"""Queue gauges computed when Prometheus scrapes, from Redis and Postgres.

A collector reads the truth at scrape time instead of keeping counters in step with every
state change, so the numbers are right however many API processes there are (each reports
the same values; dashboards take `max by (model)`). The API registers it; nothing else does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmq import breakers, events, metrics
from llmq.cache import cache_bytes_key
from llmq.catalog import Catalog, get_catalog
from llmq.db import session_scope
from llmq.job_queries import IDLE, activity_by_model
from llmq.pools import backlogs

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    """Waiting (Redis), backlog (Postgres) and in-flight jobs, oldest waiting age, live workers
    and the circuit breaker's state, per catalog model; and the bytes the exact cache holds."""

    def __init__(
        self,
        models: Callable[[], list[str]],
        client: redis.Redis,
        prefix: str,
        catalog: Catalog | None = None,
    ):
        self.models, self.client, self.prefix = models, client, prefix
        self.catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        names = self.models()
        try:
            waiting = GaugeMetricFamily(
                metrics.QUEUE_WAITING, metrics.COLLECTED[metrics.QUEUE_WAITING], labels=["model"]
            )
            live = GaugeMetricFamily(
                metrics.WORKERS_LIVE, metrics.COLLECTED[metrics.WORKERS_LIVE], labels=["model"]
            )
            for name, backlog in backlogs(self.client, self.prefix, names).items():
                waiting.add_metric([name], backlog.waiting)
                live.add_metric([name], backlog.workers)
            stored = GaugeMetricFamily(metrics.CACHE_BYTES, metrics.COLLECTED[metrics.CACHE_BYTES])
            stored.add_metric([], int(self.client.get(cache_bytes_key(self.prefix)) or 0))
            yield waiting
            yield live
            yield stored
            yield self._circuits(names)
        except redis.RedisError as exc:
            log.warning("queue metrics: Redis unavailable (%s)", exc.__class__.__name__)
        try:
            with session_scope() as session:
                activity = activity_by_model(session, names)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("queue metrics: Postgres unavailable (%s)", exc.__class__.__name__)
            return
        in_flight = GaugeMetricFamily(
            metrics.QUEUE_IN_FLIGHT, metrics.COLLECTED[metrics.QUEUE_IN_FLIGHT], labels=["model"]
        )
        oldest = GaugeMetricFamily(
            metrics.QUEUE_OLDEST_AGE, metrics.COLLECTED[metrics.QUEUE_OLDEST_AGE], labels=["model"]
        )
        held = GaugeMetricFamily(
            metrics.QUEUE_BACKLOG, metrics.COLLECTED[metrics.QUEUE_BACKLOG], labels=["model"]
        )
        for name in names:
            seen = activity.get(name, IDLE)
            in_flight.add_metric([name], seen.running)
            oldest.add_metric([name], seen.oldest_queued_s or 0.0)
            held.add_metric([name], seen.backlog)
        yield in_flight
        yield oldest
        yield held

    def _circuits(self, names: list[str]) -> GaugeMetricFamily:
        circuits = GaugeMetricFamily(
            metrics.CIRCUIT_STATE, metrics.COLLECTED[metrics.CIRCUIT_STATE], labels=["model"]
        )
        catalog = self.catalog or get_catalog()
        specs = [catalog.get(name) for name in names if name in catalog]
        for name, state in breakers.read_states(self.client, self.prefix, specs).items():
            circuits.add_metric([name], breakers.STATE_VALUES[state])
        return circuits


def scrape_targets(client: redis.Redis, prefix: str) -> list[dict]:
    """Prometheus HTTP service discovery: one target per live worker that serves metrics.

    Only `__meta_` labels are given, so the workers' own `model` label is not renamed.
    """
    targets = []
    for beat in events.live_worker_records(client, prefix):
        host, port = beat.get("metrics_host"), beat.get("metrics_port")
        if not host or not port:
            continue
        targets.append(
            {
                "targets": [f"{host}:{port}"],
                "labels": {
                    "__meta_llmq_model": str(beat.get("model", "")),
                    "__meta_llmq_node": str(beat.get("node", "")),
                },
            }
        )
    return sorted(targets, key=lambda t: t["targets"][0])
