"""Queue names and the Celery app: what monitors see of a job's task."""

from __future__ import annotations

import time
import uuid

from celery.events.state import State

from llmq.queues import GENERATE_TASK, display_name, make_celery


def _event(type_: str, task_id: str, clock: int, **fields) -> dict:
    return {"type": type_, "uuid": task_id, "timestamp": time.time(), "clock": clock,
            "hostname": "worker@test", "local_received": time.time(), **fields}  # fmt: skip


def test_flower_keeps_the_model_in_the_task_name_when_the_sent_event_arrives_last():
    """The API's `task-sent` and the worker's events travel on different connections, so
    Flower may read the sent event after the task succeeded; it must not rename the task."""
    app = make_celery()
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(
        task_id, GENERATE_TASK, args=[task_id], shadow=display_name("echo"), create_sent_event=True
    )
    state = State()
    state.event(_event("task-received", task_id, 2, name=display_name("echo"), args="()"))
    state.event(_event("task-succeeded", task_id, 3, result="'succeeded'"))
    state.event(_event("task-sent", task_id, 1, **message.sent_event))

    task = state.tasks[task_id]
    assert task.state == "SUCCESS"
    assert task.name == "llmq.generate:echo"


def test_an_unshadowed_message_keeps_its_own_name():
    """As `send_task` builds it: the sent event is asked for, as the app's config does."""
    app = make_celery()
    message = app.amqp.as_task_v2(str(uuid.uuid4()), GENERATE_TASK, args=[], create_sent_event=True)
    assert message.sent_event["name"] == GENERATE_TASK
