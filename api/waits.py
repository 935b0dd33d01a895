"""A per-key cap on open waits: long-polls (`GET /v1/jobs/{id}?wait=`) and event streams.

Each open wait holds a lease in one Redis sorted set per key (member: a random id; score:
when the lease ends, by Redis's own clock), so every API replica counts against the same
cap. A wait removes its lease when it ends, even when the client went away; a lease whose
replica died ends by itself when its time is up. An event stream, which may last as long as
its job, renews its lease while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmq import events
from llmq.errors import RateLimited
from llmq.keys import Caller

T = TypeVar("T")

LEASE_MARGIN_S = 30  # a long-poll's lease outlives its wait by this much
STREAM_LEASE_S = 60  # an event stream renews its lease at least this often
RETRY_AFTER_S = 5

# KEYS[1]: the key's set. ARGV: cap (0: renew only), lease seconds, member.
# Drops ended leases, refuses past the cap, adds or renews the lease, and keeps the set
# alive as long as its longest lease.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap, lease_s = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
if cap == 0 and not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease_s, ARGV[3])
local ttl = math.ceil(lease_s) + 1
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


def waits_key(prefix: str, key_id: uuid.UUID | str) -> str:
    return f"{prefix}waits:{key_id}"


@dataclass
class Lease:
    """One open wait of one key."""

    client: aioredis.Redis
    key: str
    member: str

    async def renew(self, lease_s: float) -> None:
        await self.client.eval(_LEASE, 1, self.key, 0, lease_s, self.member)

    async def release(self) -> None:
        """Remove the lease, even while the request is being cancelled."""
        with anyio.CancelScope(shield=True), contextlib.suppress(RedisError):
            await self.client.zrem(self.key, self.member)


async def acquire(
    client: aioredis.Redis, prefix: str, caller: Caller, cap: int, lease_s: float
) -> Lease:
    """A lease for one more open wait, or 429 when the key already holds `cap` of them."""
    lease = Lease(client, waits_key(prefix, caller.key_id), uuid.uuid4().hex)
    if not await client.eval(_LEASE, 1, lease.key, cap, lease_s, lease.member):
        raise RateLimited(
            f"this key already holds {cap} open waits (long-polls and event streams); "
            "close one, or poll without `wait`",
            retry_after_s=RETRY_AFTER_S,
            headers={"RateLimit-Policy": f'"open_waits";q={cap};qu="concurrent-requests"'},
            policy="open_waits",
        )
    return lease


async def until_ended(
    client: aioredis.Redis,
    prefix: str,
    job_ids: list[str],
    load: Callable[[], Awaitable[tuple[bool, T]]],
    timeout_s: float,
) -> T:
    """Wait on the jobs' "done" messages until `load` says they all ended, or `timeout_s`
    passes; return what `load` last read. `load` answers (all ended?, what it read); it runs
    once after subscribing, so an end between the caller's first read and the subscription
    is not missed, and again on every "done". Raises RedisError when Redis does not answer."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*(events.job_channel(prefix, job_id) for job_id in job_ids))
        ended, value = await load()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not ended:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            message = await pubsub.get_message(timeout=min(left, 5.0))
            if message is not None and events.is_done(message["data"]):
                ended, value = await load()
        return value
    finally:
        with contextlib.suppress(RedisError):
            await pubsub.aclose()
