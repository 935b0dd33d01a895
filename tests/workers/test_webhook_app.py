"""The webhook sweep against real Postgres and Redis, with no sender consuming the queue."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter

import redis
import sqlalchemy as sa

from llmq import outbox
from llmq.broker import UNACKED_INDEX_KEY, UNACKED_KEY
from llmq.db import session_scope
from llmq.models import WebhookDelivery
from llmq.queues import WEBHOOK_QUEUE, make_celery, priority_keys
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, REDIS_URL
from workers import webhook_app

URL = "http://127.0.0.1:9/hook"  # never called: no sender runs in this module


def _delivery_of(raw: bytes) -> str:
    """The delivery id a webhook message carries as its argument (whatever its task id)."""
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0]


def _waiting(client: redis.Redis) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for key in priority_keys(WEBHOOK_QUEUE, REDIS_PREFIX):
        for raw in client.lrange(key, 0, -1):
            found.setdefault(_delivery_of(raw), []).append(raw)
    return found


def _take(client: redis.Redis, raw: bytes) -> None:
    for key in priority_keys(WEBHOOK_QUEUE, REDIS_PREFIX):
        client.lrem(key, 0, raw)


def _due_again(ids: list[str]) -> None:
    """Move the sweep's 30 s hand-out lease into the past, as if that much time had passed."""
    with session_scope() as session:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(lease_expires_at=sa.func.now() - sa.text("interval '1 second'"))
        )


def _sweep_past_leases(ids: list[str], times: int) -> None:
    settings = get_settings()
    celery, client = make_celery(settings), redis.Redis.from_url(REDIS_URL)
    for _ in range(times):
        _due_again(ids)
        webhook_app.sweep(celery, client, settings)


def test_each_due_delivery_has_one_message_however_often_the_sweep_runs(client, auth, redis_client):
    ids = []
    for _ in range(3):
        body = {"model": "parked", "prompt": "x", "webhook_url": URL}
        job = client.post("/v1/jobs", json=body, headers=auth).json()
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
        ids.append(outbox.delivery_id(uuid.UUID(job["id"])))

    _sweep_past_leases(ids, times=4)
    waiting = _waiting(redis_client)
    assert Counter({i: len(waiting.get(i, [])) for i in ids}) == Counter(dict.fromkeys(ids, 1))

    lost, held, stuck = ids
    _take(redis_client, waiting[lost][0])  # Redis lost it
    tags = []
    for delivery, delivered_at in ((held, time.time()), (stuck, time.time() - 3600)):
        # A sender took it: kombu moves it to the `unacked` hash with its delivery time.
        raw = waiting[delivery][0]
        _take(redis_client, raw)
        tag = f"tag-{uuid.uuid4().hex}"
        tags.append(tag)
        entry = json.dumps([json.loads(raw), "", WEBHOOK_QUEUE])
        redis_client.hset(REDIS_PREFIX + UNACKED_KEY, tag, entry)
        redis_client.zadd(REDIS_PREFIX + UNACKED_INDEX_KEY, {tag: delivered_at})

    _sweep_past_leases(ids, times=3)
    waiting = _waiting(redis_client)
    assert len(waiting.get(lost, [])) == 1  # published again, once
    assert held not in waiting  # its sender has it
    assert len(waiting.get(stuck, [])) == 1  # its sender took it an hour ago and is gone
    for delivery in ids:
        for raw in waiting.get(delivery, []):
            _take(redis_client, raw)
    redis_client.hdel(REDIS_PREFIX + UNACKED_KEY, *tags)
    redis_client.zrem(REDIS_PREFIX + UNACKED_INDEX_KEY, *tags)
