"""Queue names, task names, priorities and the Celery app factory shared by api and workers.

The API only *sends* tasks by name through this app; it never imports `workers/`.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from celery import Celery

from llmq.settings import Settings, get_settings

GENERATE_TASK = "llmq.generate"
QUEUE_PREFIX = "llmq.model."
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"


def queue_name(model: str) -> str:
    return f"{QUEUE_PREFIX}{model}"


def broker_priority(priority: int) -> int:
    """Map the API's priority (0 normal … 9 most urgent) to Redis's (0 first … 9 last)."""
    return 9 - priority


def queue_keys(model: str, prefix: str) -> list[str]:
    """Every Redis list that holds the model's waiting messages, one per priority step."""
    base = queue_name(model)
    return [prefix + (base if p == 0 else f"{base}{PRIORITY_SEP}{p}") for p in PRIORITY_STEPS]


def waiting_count(client: redis.Redis, model: str, prefix: str) -> int:
    """Messages waiting in a model's queue, all priority lists counted."""
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(model, prefix):
            pipe.llen(key)
        return int(sum(pipe.execute()))


def celery_config(settings: Settings) -> dict:
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "priority_steps": PRIORITY_STEPS,
        "sep": PRIORITY_SEP,
        "queue_order_strategy": "priority",
        "global_keyprefix": settings.redis_prefix,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_reject_on_worker_lost": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_create_missing_queues": True,
        "task_default_queue": "llmq.default",
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("llmq")
    app.conf.update(celery_config(settings or get_settings()))
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery()


def publish_generate(app: Celery, job_id: str, model: str, priority: int) -> None:
    """Put one job's message on its model's queue; the task id is the job id."""
    app.send_task(
        GENERATE_TASK,
        args=[job_id],
        task_id=job_id,
        queue=queue_name(model),
        priority=broker_priority(priority),
    )


def declare_queue(app: Celery, model: str) -> None:
    """(Re)create the queue's routing in Redis, bypassing kombu's per-connection cache.

    kombu routes a message through a binding set it writes once per connection; if Redis
    lost its data, publishes would be dropped until every process restarts. The sweeper
    calls this before it publishes again.
    """
    queue = app.amqp.queues[queue_name(model)]
    with app.connection_for_write() as conn:
        queue.bind(conn.default_channel).declare()
