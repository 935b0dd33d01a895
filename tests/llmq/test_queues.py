"""Queue names and the Celery app: what monitors see of a job's task."""

from __future__ import annotations

import contextlib
import time
import uuid

import redis
from celery.events.state import State

from llmq import messages
from llmq.queues import (
    GENERATE_TASK,
    Message,
    bound_key,
    display_name,
    held_key,
    interactive_room,
    make_celery,
    priority_keys,
    queue_keys,
    queue_name,
)
from tests.conftest import REDIS_PREFIX, REDIS_URL, wait_for


def _sent_event(model: str) -> dict:
    """Publish a job's message as the API does, and read the `task-sent` event it sends."""
    app = make_celery()
    seen: list[dict] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"task-sent": seen.append})
        with receiver.consumer_context(wakeup=False) as (connection, _, _):

            def received() -> bool:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
                return bool(seen)

            received()  # Redis subscribes to the event channel on the first poll
            client = redis.Redis.from_url(REDIS_URL)
            messages.publish(app, client, REDIS_PREFIX, [Message(str(uuid.uuid4()), model, 0)])

            wait_for(received, 30, "the task-sent event")
    redis.Redis.from_url(REDIS_URL).delete(*queue_keys(model, REDIS_PREFIX))
    return seen[0]


def _event(type_: str, task_id: str, clock: int, **fields) -> dict:
    return {"type": type_, "uuid": task_id, "timestamp": time.time(), "clock": clock,
            "hostname": "worker@test", "local_received": time.time(), **fields}  # fmt: skip


def test_flower_keeps_the_model_in_the_task_name_when_the_sent_event_arrives_last():
    """The API's `task-sent` and the worker's events travel on different connections, so
    Flower may read the sent event after the task succeeded; it must not rename the task."""
    model = f"sent-{uuid.uuid4().hex[:8]}"
    sent = _sent_event(model)
    assert sent["name"] == display_name(model)
    task_id = sent["uuid"]
    state = State()
    state.event(_event("task-received", task_id, 2, name=display_name(model), args="()"))
    state.event(_event("task-succeeded", task_id, 3, result="'succeeded'"))
    state.event({**sent, "type": "task-sent", "clock": 1, "local_received": time.time()})

    task = state.tasks[task_id]
    assert task.state == "SUCCESS"
    assert task.name == f"{GENERATE_TASK}:{model}"


def test_interactive_room_is_the_bound_less_the_interactive_lane_unless_the_key_is_held(
    redis_client,
):
    model = f"room-{uuid.uuid4().hex[:8]}"
    lanes = priority_keys(queue_name(model), REDIS_PREFIX)
    bound, held = bound_key(REDIS_PREFIX, model), held_key(REDIS_PREFIX, model)
    try:
        assert interactive_room(redis_client, model, REDIS_PREFIX, "a") is None  # no feeder
        redis_client.set(bound, 5)
        redis_client.lpush(lanes[0], "m1", "m2")
        redis_client.lpush(lanes[9], "m3")
        redis_client.lpush(queue_keys(model, REDIS_PREFIX)[-1], "a batch line")  # other lane
        assert interactive_room(redis_client, model, REDIS_PREFIX, "a") == 2
        redis_client.sadd(held, "a")
        assert interactive_room(redis_client, model, REDIS_PREFIX, "a") == 0
        assert interactive_room(redis_client, model, REDIS_PREFIX, "b") == 2
        redis_client.lpush(lanes[3], *[f"x{i}" for i in range(4)])
        assert interactive_room(redis_client, model, REDIS_PREFIX, "b") == -2  # over its bound
    finally:
        redis_client.delete(bound, held, *queue_keys(model, REDIS_PREFIX))
