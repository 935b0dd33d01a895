"""After a commit: the effects that follow it, each on its own."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmq import ratelimit
from llmq.announce import Announcer, Committed, token_deltas
from llmq.queues import get_celery
from tests.conftest import REDIS_PREFIX

A, B = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("ended", "deltas"),
    [
        ([(A, 100, 40)], {A: -60}),
        ([(A, 100, 40), (A, 10, 30), (B, 5, 9)], {A: -40, B: 4}),
        ([(A, None, 40)], {}),  # charged nothing at submit: nothing to correct
        ([(A, 50, 50), (B, 10, 20), (B, 20, 10)], {}),  # exact, or evens out
    ],
)
def test_token_deltas(ended, deltas):
    assert token_deltas(ended) == deltas


def test_a_failed_effect_does_not_stop_the_others(redis_client):
    """Waiters cannot be told (their Redis is down); the token rate is still corrected."""
    down = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    key_id = uuid.uuid4()
    counter = ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm")
    ratelimit.admit(redis_client, REDIS_PREFIX, key_id, [ratelimit.Rule("tpm", 100, 100)])
    charged_tat = float(redis_client.hget(counter, "tat"))
    announcer = Announcer(down, get_celery(), REDIS_PREFIX, limits=redis_client)
    announcer.announce(Committed(ended=[str(uuid.uuid4())], stop=["x"], token_deltas={key_id: -90}))
    assert float(redis_client.hget(counter, "tat")) < charged_tat - 50  # 90 x 0.6 s back
    redis_client.delete(counter)
