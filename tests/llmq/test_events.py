"""A job's stream, written and read back through the helpers in `llmq.events`."""

from __future__ import annotations

import uuid

from llmq import events
from tests.conftest import REDIS_PREFIX


def test_text_then_done_read_back_in_order(redis_client):
    job_id = str(uuid.uuid4())
    key = events.stream_key(REDIS_PREFIX, job_id)
    assert events.stream_ended(redis_client.xrevrange(key, count=1))  # no stream: nothing comes
    events.append_text(redis_client, REDIS_PREFIX, {job_id: "Hello"})
    events.append_text(redis_client, REDIS_PREFIX, {job_id: " world"})
    assert not events.stream_ended(redis_client.xrevrange(key, count=1))
    events.publish_done(redis_client, REDIS_PREFIX, [job_id])
    entries = events.read_entries(redis_client.xread({key: "0-0"}))
    assert [(e.kind, e.text, e.done) for e in entries] == [
        (events.TOKEN, "Hello", False),
        (events.TOKEN, " world", False),
        (events.DONE, "", True),
    ]
    resumed = events.read_entries(redis_client.xread({key: entries[0].id}))
    assert [e.text for e in resumed] == [" world", ""]
    assert events.stream_ended(redis_client.xrevrange(key, count=1))
    assert 0 < redis_client.ttl(key) <= events.STREAM_TTL_S
    assert events.read_entries(None) == [] and events.read_entries([]) == []
    redis_client.delete(key)
