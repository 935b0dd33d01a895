"""The exact cache: a determined job's answer, kept in Redis under a hash of all it depends on.

A job is determined when its parameters leave the model no choice: greedy (temperature 0), or
sampled with a fixed `seed`. Its key is a SHA-256 of the model, the model's revision (every
catalog field that can change what it writes, and the installed version of its weights
package), the canonical prompt, every generation parameter and the scope (the calling key,
unless `LLMQ_CACHE_SHARED_ACROSS_KEYS`). So a catalog or model change, or any parameter,
gives another key, and an entry is only found by a request it answers word for word.

The API computes the key at submit (`api.submission.Submission`) and looks it up; a hit
becomes a job that ends at admission. A miss keeps the key on its job row, and the worker that
finishes the job stores its answer (`llmq.announce`). Entries expire after `LLMQ_CACHE_TTL_S`;
`LLMQ_CACHE_MAX_ENTRY_BYTES` bounds one entry and `LLMQ_CACHE_MAX_BYTES` all of them: a
sorted set indexes entries by expiry, and each store first drops what has expired and then the
soonest to expire (the oldest stored) until the total fits.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import redis

from llmq.catalog import ModelSpec
from llmq.generation import GenerationParams
from llmq.settings import Settings

KEY_VERSION = 1  # bump when what goes into a key changes: every old entry then misses
SHARED_SCOPE = "*"
# Catalog fields that change when or where a job runs, or what it costs, never what it writes.
NOT_IN_REVISION = frozenset(
    {
        "description",
        "max_batch_size",
        "max_batch_tokens",
        "max_batch_wait_ms",
        "batch_settle_ms",
        "price_input_per_mtok_usd",
        "price_output_per_mtok_usd",
        "price_cache_hit_per_mtok_usd",
        "gpu_hour_usd",
        "min_replicas",
        "max_replicas",
        "target_backlog_per_replica",
        "echo_delay_ms",
    }
)


@dataclass(frozen=True)
class Answer:
    """What a cached job answers with: the text and the tokens its original counted."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Answer:
        return cls(**json.loads(raw))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def is_deterministic(params: GenerationParams) -> bool:
    """Greedy, or sampled with a fixed seed: the same request gets the same answer."""
    return params.greedy or params.seed is not None


def is_whole_answer(finish_reason: str | None, completion_tokens: int, max_tokens: int) -> bool:
    """Whether a succeeded job's text is the whole answer its request determines: it ended at
    a stop (end of text or a stop sequence) or at its `max_tokens`; not when it was cancelled
    or cut short by the worker's time bound (also reported as `length`)."""
    if finish_reason == "stop":
        return True
    return finish_reason == "length" and completion_tokens >= max_tokens


def model_revision(spec: ModelSpec) -> str:
    """Every catalog field that can change the model's output, with the installed version of
    its weights package (empty where the API does not have it installed), as one string."""
    fields = spec.model_dump(mode="json", exclude=set(NOT_IN_REVISION))
    if spec.source and spec.source.package:
        fields["package_version"] = package_version(spec.source.package)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def package_version(package: str) -> str:
    """The installed distribution's version, looked up once per process (a new version of a
    weights package is installed with a restart)."""
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return ""


def scope(key_id: uuid.UUID, shared: bool) -> str:
    return SHARED_SCOPE if shared else str(key_id)


def cache_key(
    model: str,
    revision: str,
    scope: str,
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    params: GenerationParams,
) -> str:
    """The entry's key: SHA-256 over everything the answer depends on, in canonical JSON
    (keys sorted, no spaces), so equal requests hash equal however their JSON was written.
    `params` has `max_tokens` resolved (the model's default written out)."""
    document = {
        "v": KEY_VERSION,
        "model": model,
        "revision": revision,
        "scope": scope,
        "input": {"prompt": prompt} if messages is None else {"messages": messages},
        "params": params.to_row(),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def semantic_namespace(model: str, revision: str, params: GenerationParams) -> str:
    """Where the semantic cache keeps a job's prompt: everything its answer depends on but
    the prompt itself (a paraphrase with other parameters is another question)."""
    return cache_key(model, revision, "", None, [], params)


def semantic_text(prompt: str | None, messages: list[dict[str, Any]] | None) -> str:
    """The text the semantic cache embeds: the prompt, or the messages' contents, one a line
    (role labels would be words every prompt shares, and lift every similarity)."""
    if messages is None:
        return prompt or ""
    return "\n".join(str(m.get("content") or "") for m in messages)


def usable(keys: list[str | None], params: list[GenerationParams]) -> list[str | None]:
    """The keys of one request's jobs that may use the cache.

    Seeded jobs that repeat a key within the request (OpenAI's `n`, or equal bulk items) are
    each expected to differ, as they do when a worker samples them in one batch; one cached
    answer would make them equal, so they use no cache. Greedy repeats are equal anyway.
    """
    seen = Counter(k for k in keys if k is not None)
    return [
        None if k is None or (not p.greedy and seen[k] > 1) else k
        for k, p in zip(keys, params, strict=True)
    ]


def no_store(cache_control: str | None) -> bool:
    """Whether a `Cache-Control` request header carries the `no-store` directive."""
    if not cache_control:
        return False
    directives = (d.split("=", 1)[0].strip().lower() for d in cache_control.split(","))
    return "no-store" in directives


def cache_bytes_key(prefix: str) -> str:
    """The counter of bytes all entries hold (the `llmq_cache_bytes` gauge)."""
    return f"{prefix}cache:bytes"


# Store one entry and keep the total in bounds, atomically.
# KEYS: entry, index (zset: entry key -> expiry ms), sizes (hash: entry key -> bytes), total.
# ARGV: value, ttl ms, now ms, max total bytes.
_PUT = """
local function drop(key)
  local size = tonumber(redis.call('HGET', KEYS[3], key) or '0')
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[3], key)
  redis.call('DECRBY', KEYS[4], size)
end
local now, ttl, limit = tonumber(ARGV[3]), tonumber(ARGV[2]), tonumber(ARGV[4])
drop(KEYS[1])
local size = string.len(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[4], size)
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do drop(key) end
total = tonumber(redis.call('GET', KEYS[4]) or '0')
while total > limit do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return total
"""


class AnswerCache:
    """The entries in Redis. Every call may raise `redis.RedisError`; callers treat the cache
    as optional (a lookup that fails is a miss, a store that fails is lost)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_s: int,
        max_entry_bytes: int,
        max_bytes: int,
        shared: bool = False,
    ) -> None:
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s
        self.max_entry_bytes, self.max_bytes, self.shared = max_entry_bytes, max_bytes, shared

    @classmethod
    def for_settings(cls, settings: Settings, client: redis.Redis) -> AnswerCache:
        return cls(
            client,
            settings.redis_prefix,
            settings.cache_ttl_s,
            settings.cache_max_entry_bytes,
            settings.cache_max_bytes,
            settings.cache_shared_across_keys,
        )

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_bytes > 0

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}cache:entry:{key}"

    @property
    def total_key(self) -> str:
        return cache_bytes_key(self.prefix)

    def get_many(self, keys: list[str]) -> list[Answer | None]:
        """The answers stored under the keys, in order; None where there is none."""
        if not keys:
            return []
        raw = self.client.mget([self.entry_key(k) for k in keys])
        return [Answer.from_bytes(r) if r is not None else None for r in raw]

    def put(self, key: str, answer: Answer) -> int | None:
        """Store an answer; returns the bytes all entries now hold, or None when the entry
        alone is over `max_entry_bytes` and was not stored."""
        value = answer.to_bytes()
        if len(value) > self.max_entry_bytes or not self.enabled:
            return None
        entry = self.entry_key(key)
        index, sizes = f"{self.prefix}cache:index", f"{self.prefix}cache:sizes"
        now_ms = int(time.time() * 1000)
        keys = (entry, index, sizes, self.total_key)
        return int(
            self.client.eval(_PUT, 4, *keys, value, self.ttl_s * 1000, now_ms, self.max_bytes)
        )

    def stored_bytes(self) -> int:
        return int(self.client.get(self.total_key) or 0)
