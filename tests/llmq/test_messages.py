"""The API's own generate messages are what Celery's `send_task` writes, field by field, and
a worker runs them."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from llmq import messages
from llmq.queues import Message, get_celery, priority_keys, publish_generate, queue_name
from tests.conftest import REDIS_PREFIX, wait_final

VOLATILE_HEADERS = {"origin"}  # the sending process's name
VOLATILE_PROPERTIES = {"delivery_tag", "reply_to"}  # random per message; per app and thread
VOLATILE_EVENT = {"hostname", "pid", "clock", "timestamp", "utcoffset"}


def decoded(raw: bytes) -> dict:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope


def comparable(envelope: dict) -> dict:
    out = dict(envelope)
    out["headers"] = {k: v for k, v in envelope["headers"].items() if k not in VOLATILE_HEADERS}
    out["properties"] = {
        k: v for k, v in envelope["properties"].items() if k not in VOLATILE_PROPERTIES
    }
    if isinstance(out["body"], dict):
        out["body"] = {k: v for k, v in out["body"].items() if k not in VOLATILE_EVENT}
    return out


def written(redis_client, message: Message, send) -> tuple[dict, dict]:
    """The queued message and the task-sent event that `send` wrote for `message`. The
    model's queue is emptied first: earlier tests leave messages no worker takes there."""
    keys = priority_keys(queue_name(message.model), REDIS_PREFIX)
    redis_client.delete(*keys)
    subscriber = redis_client.pubsub()
    subscriber.psubscribe(f"{REDIS_PREFIX}*celeryev*")
    assert subscriber.get_message(timeout=5)["type"] == "psubscribe"
    send(message)
    event = subscriber.get_message(timeout=5)
    subscriber.close()
    (key,) = [k for k in keys if redis_client.llen(k)]
    raw = redis_client.rpop(key)
    return decoded(raw), {"channel": event["channel"].decode(), **decoded(event["data"])}


@pytest.mark.parametrize("priority", [0, 4, 9])
def test_a_message_is_what_send_task_writes(redis_client, priority):
    celery = get_celery()
    ours_for = Message(str(uuid.uuid4()), "parked", priority)
    theirs_for = ours_for._replace(job_id=str(uuid.uuid4()))
    theirs, their_event = written(redis_client, theirs_for, lambda m: publish_generate(celery, m))
    ours, our_event = written(
        redis_client, ours_for, lambda m: messages.publish(celery, redis_client, REDIS_PREFIX, [m])
    )
    same_id = json.loads(json.dumps(comparable(theirs)).replace(theirs_for.job_id, ours_for.job_id))
    assert comparable(ours) == same_id
    their_event = json.loads(
        json.dumps(comparable(their_event)).replace(theirs_for.job_id, ours_for.job_id)
    )
    assert comparable(our_event) == their_event


def test_a_worker_runs_what_the_api_wrote(client, auth, start_worker):
    start_worker("echo")
    job = client.post("/v1/jobs", json={"model": "echo", "prompt": "hi"}, headers=auth).json()
    assert wait_final(client, auth, job["id"])["status"] == "succeeded"


def test_messages_of_one_list_are_taken_in_the_order_they_were_published(redis_client):
    """One LPUSH carries every message of a list: the first published is still the first
    a worker takes (kombu pops from the list's tail)."""
    sent = [Message(str(uuid.uuid4()), "parked", 0) for _ in range(3)]
    sent.append(Message(str(uuid.uuid4()), "parked", 9))  # another priority: another list
    keys = priority_keys(queue_name("parked"), REDIS_PREFIX)
    redis_client.delete(*keys)
    messages.publish(get_celery(), redis_client, REDIS_PREFIX, sent)
    taken = [
        decoded(raw)["headers"]["id"]
        for key in keys
        for raw in reversed(redis_client.lrange(key, 0, -1))  # the tail first, as RPOP
    ]
    assert taken == [sent[3].job_id, *(m.job_id for m in sent[:3])]  # priority 9 goes first
