"""A no-op Celery task on the same Redis: the floor that llmq's own overhead is measured against."""

from __future__ import annotations

import os

import redis

from llmq.queues import make_celery

app = make_celery()
COUNTER = os.environ.get("LLMQ_REDIS_PREFIX", "") + "bench:noop-count"
_client = redis.Redis.from_url(app.conf.broker_url)


@app.task(name="bench.noop")
def noop() -> None:
    _client.incr(COUNTER)
