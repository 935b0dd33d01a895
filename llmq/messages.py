"""Generate tasks' messages written straight to Redis, as Celery and kombu would write them.

Celery's `send_task` spends a fraction of a millisecond of Python on every message (signature
checks, argument reprs, a `task-sent` event encoded through kombu's producer): at bulk sizes
that is most of a submit. A generate message always has one shape (the job id as the only
argument and as the task id), so the API writes kombu's Redis envelope itself: one LPUSH on
the message's priority list and one PUBLISH of its `task-sent` event (Flower's view of a
queued task), every message of a request in one pipeline.

Names that are kombu's business (the priority list of a queue, the event channel) are asked
of kombu once per process. `tests/llmq/test_messages.py` holds each message and event equal,
field by field, to what `send_task` writes, so an upgrade that changes the format fails there
rather than in production. Workers, the sweeper and batches still publish through Celery.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset

from llmq.queues import (
    BATCH_BROKER_PRIORITY,
    GENERATE_TASK,
    PRIORITY_STEPS,
    Message,
    batch_queue_name,
    broker_priority,
    display_name,
    queue_name,
)

EVENT_EXCHANGE, SENT_ROUTING_KEY = "celeryev", "task.sent"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class Routes:
    """What kombu calls things, without its global key prefix."""

    suffixes: dict[int, str]  # broker priority -> what follows the queue's name in its list
    sent_topics: tuple[str, ...]  # channels a task-sent event goes to


@lru_cache(maxsize=8)
def routes(app: Celery) -> Routes:
    """Ask kombu once how it names the priority lists and the task-sent channel."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        topics = tuple(channel._get_publish_topics(EVENT_EXCHANGE, SENT_ROUTING_KEY))
        return Routes({p: channel._q_for_pri("", p) for p in PRIORITY_STEPS}, topics)


def _b64_json(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def queue_of(message: Message) -> str:
    return batch_queue_name(message.model) if message.batch else queue_name(message.model)


def priority_of(message: Message) -> int:
    return BATCH_BROKER_PRIORITY if message.batch else broker_priority(message.priority)


def task_envelope(message: Message, origin: str, reply_to: str) -> dict:
    """The message as kombu's Redis transport stores it in the queue list (Celery's
    protocol 2, JSON body, base64 body encoding)."""
    job_id, queue = message.job_id, queue_of(message)
    headers = {
        "lang": "py", "task": GENERATE_TASK, "id": job_id, "shadow": display_name(message.model),
        "eta": None, "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": job_id, "parent_id": None,
        "argsrepr": repr([job_id]), "kwargsrepr": "{}", "origin": origin, "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    properties = {
        "correlation_id": job_id, "reply_to": reply_to, "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": priority_of(message), "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }  # fmt: skip
    return {
        "body": _b64_json([[job_id], {}, EMBED]),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }


def sent_event_envelope(message: Message, hostname: str, clock: int, now: float) -> dict:
    """The `task-sent` event Celery publishes for the message (`task_send_sent_event`)."""
    job_id, queue = message.job_id, queue_of(message)
    event = {
        "hostname": hostname, "utcoffset": utcoffset(), "pid": os.getpid(), "clock": clock,
        "uuid": job_id, "root_id": job_id, "parent_id": None, "name": display_name(message.model),
        "args": repr([job_id]), "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
        "queue": queue, "exchange": "", "routing_key": queue, "timestamp": now,
        "type": "task-sent",
    }  # fmt: skip
    return {
        "body": _b64_json(event),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": SENT_ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def publish(app: Celery, client: redis.Redis, prefix: str, messages: Iterable[Message]) -> None:
    """Every message and its sent event, in one Redis round trip."""
    known = routes(app)
    origin = hostname = anon_nodename()
    reply_to, now = app.thread_oid, time.time()
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            key = prefix + queue_of(message) + known.suffixes[priority_of(message)]
            pipe.lpush(key, json.dumps(task_envelope(message, origin, reply_to)))
            event = json.dumps(sent_event_envelope(message, hostname, app.clock.forward(), now))
            for topic in known.sent_topics:
                pipe.publish(prefix + topic, event)
        pipe.execute()
