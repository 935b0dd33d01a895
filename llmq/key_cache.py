"""Each API process's cache of key lookups, emptied in every process when a key changes.

Without it, every request reads its key from Postgres. A process keeps the callers it looked
up for `LLMQ_AUTH_CACHE_TTL_S`; whoever revokes (or changes) a key publishes its id on one
Redis channel after the commit (`announce_changed`), and every process drops it.

"At once" holds because no request trusts the cache before it has read every message already
on the subscription's socket (a non-blocking read, under a lock), and a revocation returns
only once the message is on every subscriber's socket (see `announce_changed`). Two more
rules keep a missed message from keeping a revoked key alive: while the subscription is not
confirmed (Redis down, reconnecting) nothing is served from the cache, and a lookup that ran
while a message arrived is not stored (the generation moved). Unknown keys are never cached:
a new key works on its first request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis

from llmq.keys import Caller, hash_key

log = logging.getLogger(__name__)

CHANNEL = "keys:changed"
EVERY_KEY = "*"
MAX_ENTRIES = 100_000  # past this, the cache starts over: a bound on memory, not a policy
RESUBSCRIBE_AFTER_S = 1.0
LOCK_WAIT_S = 0.05  # longer, and the request reads Postgres instead of waiting on the lock


def channel(prefix: str) -> str:
    return f"{prefix}{CHANNEL}"


def announce_changed(client: redis.Redis, prefix: str, key_id: uuid.UUID | str) -> None:
    """Tell every API process that this key changed; call it after the change commits.

    Redis answers a PUBLISH before it has always written the message to the subscribers'
    sockets; it writes every pending reply before it reads the next command, so once the
    PING after it is answered, each subscriber's socket holds the message."""
    client.publish(channel(prefix), str(key_id))
    client.ping()


def subscriber_client(url: str) -> redis.Redis:
    """A client for the subscription: short timeouts, and pings that find a dead link."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=0.25,
        socket_timeout=1.0,
        socket_keepalive=True,
        health_check_interval=10,
    )


class KeyCache:
    """Callers by key hash, valid for `ttl_s`, while a subscription to `channel` holds."""

    def __init__(self, client: redis.Redis | None, prefix: str, ttl_s: float):
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._pubsub: redis.client.PubSub | None = None
        self._confirmed = False
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.ttl_s > 0

    def authenticate(self, plain: str, lookup: Callable[[str], Caller]) -> Caller:
        """The caller for a plain key: from the cache when it may answer, else `lookup`'s."""
        if not self.enabled:
            return lookup(plain)
        digest = hash_key(plain)
        if not self._lock.acquire(timeout=LOCK_WAIT_S):  # another thread is reconnecting
            return lookup(plain)
        try:
            trusted = self._catch_up()
            generation = self._generation
            entry = self._entries.get(digest) if trusted else None
        finally:
            self._lock.release()
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        caller = lookup(plain)  # raises for an unknown or revoked key: nothing is stored
        if trusted and self._lock.acquire(timeout=LOCK_WAIT_S):
            try:
                if self._catch_up() and self._generation == generation:
                    if len(self._entries) >= MAX_ENTRIES:
                        self._entries.clear()
                    self._entries[digest] = (caller, time.monotonic() + self.ttl_s)
            finally:
                self._lock.release()
        return caller

    def cached(self, plain: str) -> Caller | None:
        """The caller for a plain key if the cache may answer at once, else None; it never
        waits on the lock or connects, so an event loop may call it (`authenticate` then
        does the rest in a thread)."""
        if not self.enabled or self._pubsub is None or not self._lock.acquire(blocking=False):
            return None
        try:
            entry = self._entries.get(hash_key(plain)) if self._catch_up() else None
        finally:
            self._lock.release()
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def drop(self, key_id: uuid.UUID | str) -> None:
        """Forget a key in this process now (its publisher's own process need not wait)."""
        with self._lock:
            self._forget(str(key_id))

    def close(self) -> None:
        with self._lock:
            if self._pubsub is not None:
                self._pubsub.close()
            self._pubsub, self._confirmed = None, False
            self._entries.clear()

    def _forget(self, key_id: str) -> None:
        self._generation += 1
        if key_id == EVERY_KEY:
            self._entries.clear()
            return
        for digest in [d for d, (c, _) in self._entries.items() if str(c.key_id) == key_id]:
            del self._entries[digest]

    def _catch_up(self) -> bool:
        """Apply every message waiting on the subscription; True when the cache may answer.
        The caller holds the lock."""
        try:
            if self._pubsub is None:
                if time.monotonic() < self._retry_at:
                    return False
                assert self.client is not None
                self._pubsub = self.client.pubsub()
                self._pubsub.subscribe(channel(self.prefix))
            while (message := self._pubsub.get_message(timeout=0.0)) is not None:
                if message["type"] == "subscribe":
                    self._confirmed = True  # what came before it was missed: start empty
                    self._forget(EVERY_KEY)
                elif message["type"] == "message":
                    self._forget(message["data"].decode())
        except (redis.RedisError, OSError) as exc:
            log.warning("key cache off until its subscription is back: %s", exc)
            self._lost()
        return self._confirmed

    def _lost(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._pubsub.close()
        self._pubsub, self._confirmed = None, False
        self._retry_at = time.monotonic() + RESUBSCRIBE_AFTER_S
        self._forget(EVERY_KEY)
