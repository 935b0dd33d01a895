"""Queue names, task names, priorities and the Celery app factory shared by api and workers.

The API only *sends* tasks by name through this app; it never imports `workers/`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import redis
from celery import Celery
from celery.app.amqp import AMQP

from llmq.settings import Settings, get_settings

GENERATE_TASK = "llmq.generate"
QUEUE_PREFIX = "llmq.model."
BATCH_QUEUE_PREFIX = "llmq.batch."
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"
BATCH_BROKER_PRIORITY = PRIORITY_STEPS[-1]


def queue_name(model: str) -> str:
    """The model's interactive queue: jobs from `/v1/jobs` and the OpenAI routes."""
    return f"{QUEUE_PREFIX}{model}"


def batch_queue_name(model: str) -> str:
    """The model's batch lane: jobs made from a batch's lines."""
    return f"{BATCH_QUEUE_PREFIX}{model}"


def worker_queues(model: str) -> list[str]:
    """The queues a model's workers consume, in the order they read them.

    kombu's Redis transport BRPOPs every (queue, priority step) list in one call, priority
    step first and, within a step, queues in the order the worker consumes them
    (`queue_order_strategy=priority`). Batch lines wait on the last step of the second
    queue, so a worker takes them only when no interactive message is waiting.
    """
    return [queue_name(model), batch_queue_name(model)]


class Message(NamedTuple):
    """What a job's message needs: its id, its model, its priority and its lane."""

    job_id: str
    model: str
    priority: int  # the API's 0 … 9; a batch line always waits on the last step
    batch: bool = False


def broker_priority(priority: int) -> int:
    """Map the API's priority (0 normal … 9 most urgent) to Redis's (0 first … 9 last)."""
    return 9 - priority


def priority_keys(queue: str, prefix: str) -> list[str]:
    """Every Redis list that holds a queue's waiting messages, one per priority step."""
    return [prefix + (queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}") for p in PRIORITY_STEPS]


def queue_keys(model: str, prefix: str) -> list[str]:
    """Every Redis list that holds the model's waiting messages, both lanes."""
    return [key for queue in worker_queues(model) for key in priority_keys(queue, prefix)]


def waiting_count(client: redis.Redis, model: str, prefix: str) -> int:
    """Messages waiting for a model, all priority lists of both lanes counted."""
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(model, prefix):
            pipe.llen(key)
        return int(sum(pipe.execute()))


def bound_key(prefix: str, model: str) -> str:
    """How many messages the model's queue may hold, as the scheduler leader's feeder last
    worked it out (`llmq.backlog.queue_bound`); it expires when no leader refreshes it."""
    return f"{prefix}scheduler:bound:{model}"


def held_key(prefix: str, model: str) -> str:
    """The API keys whose interactive jobs of the model the feeder's last round left in the
    backlog (they are past their fair share): their next submits wait there too, behind
    them, rather than going straight to the queue. It expires with the bound."""
    return f"{prefix}scheduler:held:{model}"


# KEYS: the bound, the held keys, then the interactive lane's lists. ARGV[1]: the API key.
_ROOM = """
local bound = redis.call('GET', KEYS[1])
if not bound then return false end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
local waiting = 0
for i = 3, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
return tonumber(bound) - waiting
"""


def interactive_room(
    client: redis.Redis, model: str, prefix: str, api_key_id: str | None = None
) -> int | None:
    """How many more interactive messages the model's queue takes now from the key, in one
    round trip (one script, not a dozen replies to parse): its bound less the messages on
    its interactive lane (the batch lane never delays them), or none while the feeder holds
    the key's earlier jobs back. None: no bound, so no feeder runs and a job must be
    published at once."""
    keys = [bound_key(prefix, model), held_key(prefix, model)]
    keys += priority_keys(queue_name(model), prefix)
    room = client.register_script(_ROOM)(keys=keys, args=[api_key_id or ""])
    return None if room is None else int(room)


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
        # The threads pool cannot stop a running task (it raises on kill_job), so cancelling on
        # a lost broker connection only logs errors. A message redelivered while its job still
        # runs is harmless: the job's claim in Postgres, fenced by attempt, skips the duplicate.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_create_missing_queues": True,
        "task_default_queue": "llmq.default",
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }


class _ShadowNamedAMQP(AMQP):
    """Celery's `task-sent` event names the real task even when the message is shadowed, and
    Flower lets a late-arriving sent event overwrite the worker's name. Name it as the worker
    will, so Flower shows `llmq.generate:<model>` whichever event comes last."""

    def as_task_v2(self, *args, **kwargs):
        message = super().as_task_v2(*args, **kwargs)  # `send_task` passes its args by position
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("llmq", amqp=_ShadowNamedAMQP)
    app.conf.update(celery_config(settings or get_settings()))
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery()


def display_name(model: str) -> str:
    """The name Flower and Celery's logs show for a job's task: the task and its model."""
    return f"{GENERATE_TASK}:{model}"


def publish_generate(app: Celery, message: Message, producer=None, declare=None) -> None:
    """Put one job's message on its model's queue (a batch line: on its batch lane); the
    task id is the job id.

    The message carries the job id and nothing else: the prompt stays in Postgres, out of
    Redis, Flower and every log. `shadow` only changes the name monitors show. `declare=[]`
    skips declaring the queue, for a caller that declared it already.
    """
    job_id, model, priority, batch = message
    app.send_task(
        GENERATE_TASK,
        args=[job_id],
        task_id=job_id,
        queue=batch_queue_name(model) if batch else queue_name(model),
        priority=BATCH_BROKER_PRIORITY if batch else broker_priority(priority),
        producer=producer,
        shadow=display_name(model),
        declare=declare,
    )


def publish_generate_many(app: Celery, messages: list[Message]) -> None:
    """Publish messages, and their `task-sent` events, through one Redis pipeline, each
    queue declared once rather than once a message (once a connection, in fact: kombu
    remembers)."""
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for model in dict.fromkeys(m.model for m in messages):
            for queue in worker_queues(model):
                producer.maybe_declare(app.amqp.queues[queue])
        for message in messages:
            publish_generate(app, message, producer=producer, declare=[])


WEBHOOK_TASK = "llmq.webhook.deliver"
WEBHOOK_QUEUE = "llmq.webhooks"


def publish_webhooks(app: Celery, delivery_ids: list[str]) -> None:
    """Ask the webhook workers to deliver these outbox rows now.

    The task id is the delivery id, so the webhook sweep can tell which rows have a message.
    Best effort: a row whose message is lost stays `pending` and the webhook worker's sweep
    sends it, so a failure here is logged, not raised (the job's end is already committed).
    """
    import logging

    for delivery_id in delivery_ids:
        try:
            app.send_task(
                WEBHOOK_TASK, args=[delivery_id], task_id=delivery_id, queue=WEBHOOK_QUEUE
            )
        except Exception:
            logging.getLogger(__name__).warning(
                "could not publish webhook %s; the sweep will send it", delivery_id
            )


FINALIZE_TASK = "llmq.batch.finalize"  # on the webhook workers' queue: no GPU needed


def publish_finalize(app: Celery, batch_ids: list[str]) -> None:
    """Ask a webhook worker to finalize these batches if their last job ended (a batch whose
    jobs are still running ignores it). Raises on a broker error: the caller's `Announcer`
    logs it, and the sweeper's pass finalizes the batch anyway."""
    for batch_id in batch_ids:
        app.send_task(FINALIZE_TASK, args=[batch_id], queue=WEBHOOK_QUEUE)


def declare_queue(app: Celery, model: str) -> None:
    """(Re)create the routing of the model's queues in Redis, past kombu's connection cache.

    kombu routes a message through a binding set it writes once per connection; if Redis
    lost its data, publishes would be dropped until every process restarts. The sweeper
    calls this before it publishes again.
    """
    with app.connection_for_write() as conn:
        for name in worker_queues(model):
            app.amqp.queues[name].bind(conn.default_channel).declare()
