"""The webhook worker's Celery app: `llmq webhook-worker` (queue `llmq.webhooks`, no model).

It loads no model and no torch. Besides the delivery task (and `llmq.batch.finalize`, which
writes a batch's files once its last job ended), a sweep thread hands due retries
and lost deliveries (a message that never reached the queue, a sender that died) back to
the queue every `LLMQ_WEBHOOK_SWEEP_S` seconds. A due delivery is published only if no
message for it is waiting in the queue or was taken by a sender less than
`LLMQ_HELD_MESSAGE_TIMEOUT_S` ago (`llmq.broker`), so a sender that falls behind is not
flooded with copies.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import redis
from celery import Celery, bootsteps

from llmq.announce import Announcer
from llmq.batches.finalize import finalize_batch
from llmq.broker import held_since, waiting_task_ids
from llmq.db import session_scope
from llmq.files import file_store
from llmq.queues import (
    FINALIZE_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    make_celery,
    priority_keys,
    publish_webhooks,
)
from llmq.settings import Settings, get_settings
from workers.webhooks import deliver_once, due_deliveries

log = logging.getLogger("llmq.webhooks")

app = make_celery()


@app.task(name=WEBHOOK_TASK)
def deliver(delivery_id: str) -> str:
    return deliver_once(delivery_id, get_settings())


@functools.cache
def announcer() -> Announcer:
    settings = get_settings()
    return Announcer.for_settings(settings, redis.Redis.from_url(settings.redis_url), app)


@app.task(name=FINALIZE_TASK)
def finalize(batch_id: str) -> bool:
    """Write a batch's files once its last job ended (`llmq.batches.finalize`); any number
    of these for one batch end it once, and send its webhook once."""
    return finalize_batch(file_store(get_settings()), batch_id, announcer())


def sweep(celery: Celery, client: redis.Redis, settings: Settings) -> list[str]:
    """Publish the due deliveries that have no live message; return their ids."""
    with session_scope() as session:
        due = due_deliveries(session)
    if not due:
        return []
    prefix = settings.redis_prefix
    present = waiting_task_ids(client, priority_keys(WEBHOOK_QUEUE, prefix))
    present |= held_since(client, prefix, time.time() - settings.held_message_timeout_s)
    lost = [str(i) for i in due if str(i) not in present]
    publish_webhooks(celery, lost)
    return lost


class SweepStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()

    def start(self, worker) -> None:
        threading.Thread(target=self._loop, name="webhook-sweep", daemon=True).start()

    def stop(self, worker) -> None:
        self._stop.set()

    def _loop(self) -> None:
        settings = get_settings()
        client = redis.Redis.from_url(settings.redis_url)
        while not self._stop.wait(settings.webhook_sweep_s):
            try:
                sweep(app, client, settings)
            except Exception:
                log.exception("webhook sweep failed; trying again")


app.steps["worker"].add(SweepStep)
