"""The webhook worker's Celery app: `llmq webhook-worker` (queue `llmq.webhooks`, no model).

It loads no model and no torch. Besides the delivery task, a sweep thread hands due retries
and lost deliveries (a message that never reached the queue, a sender that died) back to
the queue every `LLMQ_WEBHOOK_SWEEP_S` seconds.
"""

from __future__ import annotations

import logging
import threading

from celery import bootsteps

from llmq.db import session_scope
from llmq.queues import WEBHOOK_TASK, make_celery, publish_webhooks
from llmq.settings import get_settings
from workers.webhooks import deliver_once, due_deliveries

log = logging.getLogger("llmq.webhooks")

app = make_celery()


@app.task(name=WEBHOOK_TASK)
def deliver(delivery_id: str) -> str:
    return deliver_once(delivery_id, get_settings())


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
        every = get_settings().webhook_sweep_s
        while not self._stop.wait(every):
            try:
                with session_scope() as session:
                    ids = due_deliveries(session)
                publish_webhooks(app, ids)
            except Exception:
                log.exception("webhook sweep failed; trying again")


app.steps["worker"].add(SweepStep)
