"""Which task ids the Redis broker holds: waiting in queue lists, or delivered to a worker.

kombu's Redis transport keeps a delivered, unacknowledged message in the `unacked` hash
(delivery tag -> [message, exchange, routing key]) and its delivery time in the
`unacked_index` sorted set (delivery tag -> Unix time), both under the global key prefix.
A message is recognised by its task id only (Celery's protocol 2: `headers.id`, also in
`properties.correlation_id`): a body or argument that mentions some id is not its message.
Each message is parsed once per read, into a set: O(1) per lookup.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import redis

UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


def task_id(message: object) -> str | None:
    """The task id a decoded kombu message carries; None for anything else."""
    if not isinstance(message, dict):
        return None
    headers, properties = message.get("headers"), message.get("properties")
    found = headers.get("id") if isinstance(headers, dict) else None
    if found is None and isinstance(properties, dict):
        found = properties.get("correlation_id")
    return found if isinstance(found, str) else None


def _decoded(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def queued_task_ids(raws: Iterable[bytes]) -> set[str]:
    """Task ids of the messages in queue lists."""
    return {i for i in (task_id(_decoded(raw)) for raw in raws) if i is not None}


def held_task_ids(
    entries: Mapping[bytes, bytes], delivered_at: Mapping[bytes, float], since: float
) -> set[str]:
    """Task ids of the `unacked` entries delivered at or after `since` (Unix time).

    An entry delivered earlier is held by a worker that has not acted on it for that long:
    the caller treats it as lost. An entry with no delivery time counts as just delivered.
    Delivery times come from the workers' clocks, so hosts need roughly synchronised clocks
    (skew well under the caller's bound).
    """
    fresh = (v for tag, v in entries.items() if delivered_at.get(tag, since) >= since)
    decoded = (_decoded(value) for value in fresh)
    messages = (e[0] if isinstance(e, list) and e else None for e in decoded)
    return {i for i in map(task_id, messages) if i is not None}


def waiting_task_ids(client: redis.Redis, keys: Iterable[str]) -> set[str]:
    """Task ids of every message in these queue lists."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.lrange(key, 0, -1)
        return queued_task_ids(raw for items in pipe.execute() for raw in items)


def held_since(client: redis.Redis, prefix: str, since: float) -> set[str]:
    """Task ids of the messages workers hold that were delivered at or after `since`.

    Read in one transaction, so an entry and its delivery time are seen together.
    """
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(prefix + UNACKED_KEY)
        pipe.zrange(prefix + UNACKED_INDEX_KEY, 0, -1, withscores=True)
        entries, index = pipe.execute()
    return held_task_ids(entries, dict(index), since)
