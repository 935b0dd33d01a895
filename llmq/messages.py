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
EMBED_JSON = json.dumps(EMBED)


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


# Stand-ins that JSON writes as `\u0000id\u0000` and so on: no real value can contain them
# (a name with a NUL is refused), so a message is its template with these replaced.
_ID, _TAG, _BODY = "\x00id\x00", "\x00tag\x00", "\x00body\x00"
_ID_JSON, _TAG_JSON, _BODY_JSON = (json.dumps(s)[1:-1] for s in (_ID, _TAG, _BODY))
_CLOCK, _NOW = "\x00clock\x00", "\x00now\x00"  # numbers: replaced quotes and all
_CLOCK_JSON, _NOW_JSON = json.dumps(_CLOCK), json.dumps(_NOW)
_ID_REPR_JSON = json.dumps(repr(_ID)[1:-1])[1:-1]  # the id inside `argsrepr`: "['…']"


def _with_id(template: str, job_id: str) -> str:
    return template.replace(_ID_JSON, job_id).replace(_ID_REPR_JSON, job_id)


@lru_cache(maxsize=1024)
def _task_template(model: str, batch: bool, priority: int, origin: str, reply_to: str) -> str:
    """A generate message's JSON with stand-ins for its job id, delivery tag and body."""
    envelope = task_envelope(Message(_ID, model, priority, batch), origin, reply_to)
    envelope["body"], envelope["properties"]["delivery_tag"] = _BODY, _TAG
    return json.dumps(envelope)


@lru_cache(maxsize=1024)
def _event_template(model: str, batch: bool, hostname: str) -> tuple[str, str]:
    """A task-sent event's body JSON, with stand-ins for the job id, clock and time, and its
    envelope's."""
    event = sent_event_envelope(Message(_ID, model, 0, batch), hostname, 0, 0.0)
    body = json.loads(base64.b64decode(event["body"]))
    body["clock"], body["timestamp"] = _CLOCK, _NOW
    event["body"], event["properties"]["delivery_tag"] = _BODY, _TAG
    return json.dumps(body), json.dumps(event)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def encoded_task(message: Message, origin: str, reply_to: str) -> str:
    """`json.dumps(task_envelope(...))`, from a template: a tenth of the time."""
    job_id = message.job_id
    body = _b64(f'[["{job_id}"], {{}}, {EMBED_JSON}]')
    template = _task_template(message.model, message.batch, message.priority, origin, reply_to)
    return (
        _with_id(template, job_id).replace(_TAG_JSON, str(uuid.uuid4())).replace(_BODY_JSON, body)
    )


def encoded_event(message: Message, hostname: str, clock: int, now: float) -> str:
    """`json.dumps(sent_event_envelope(...))`, from a template."""
    body_template, template = _event_template(message.model, message.batch, hostname)
    body = (
        _with_id(body_template, message.job_id)
        .replace(_CLOCK_JSON, str(clock))
        .replace(_NOW_JSON, repr(now))
    )
    return template.replace(_TAG_JSON, str(uuid.uuid4())).replace(_BODY_JSON, _b64(body))


def publish(app: Celery, client: redis.Redis, prefix: str, messages: Iterable[Message]) -> None:
    """Every message and its sent event, in one Redis round trip: one LPUSH per list (the
    messages of a list in order, so they are taken in order) and one PUBLISH per event."""
    known = routes(app)
    origin = hostname = anon_nodename()
    reply_to, now = app.thread_oid, time.time()
    lists: dict[str, list[str]] = {}
    events: list[str] = []
    for message in messages:
        key = prefix + queue_of(message) + known.suffixes[priority_of(message)]
        lists.setdefault(key, []).append(encoded_task(message, origin, reply_to))
        events.append(encoded_event(message, hostname, app.clock.forward(), now))
    with client.pipeline(transaction=False) as pipe:
        for key, bodies in lists.items():
            pipe.lpush(key, *bodies)
        for event in events:
            for topic in known.sent_topics:
                pipe.publish(prefix + topic, event)
        pipe.execute()
