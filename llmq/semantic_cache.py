"""The semantic cache's store: prompt vectors by (scope, namespace), shared by every API replica.

Redis is the source of truth. Each (scope, namespace) is one Redis stream: an entry holds the
prompt's unit vector (float32 bytes) and the caller's payload (what answers a hit, e.g. a job
id), and its stream id is its creation time. Adding trims the stream to `max_entries` and to
the last `ttl_s` seconds, and the stream itself expires `ttl_s` after the last add. The
namespace is the caller's (a model and its revision), so a model change starts a new stream.

Each process keeps an index per stream, fed incrementally: a lookup reads, in one round trip,
the entries after the last one it has seen and the stream's oldest surviving id, drops what
Redis no longer holds (trimmed, expired or deleted: always a prefix of the stream) and what is
older than the TTL by Redis's clock, then searches. Small indexes are scanned exactly (one
matrix-vector product); past `EXACT_SCAN_MAX` entries, 128-bit random-hyperplane codes (16
bytes an entry, compared by Hamming distance) keep only the entries that could reach the
threshold, and those are scored exactly. An entry at the threshold is missed with chance
~3e-5, one above it less; when more than `CANDIDATES` pass, the nearest by code are scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from llmq.settings import Settings

DIMENSIONS = 384
CODE_BITS = 128
EXACT_SCAN_MAX = 8192
CANDIDATES = 256  # the most entries scored exactly past the exact scan
MISS_SIGMAS = 4.0  # an entry at the threshold fails the Hamming cut with chance ~3e-5
READ_PAGE = 2_000  # entries a read returns: ~3 MB, a few ms of Redis's time
# Append, trim to the newest ARGV[1] entries and to the last ARGV[4] ms (by the new entry's
# own id, Redis's clock), and expire the stream ARGV[4] ms after its last add.
_ADD = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'v', ARGV[2], 'p', ARGV[3])
local ms = tonumber(string.match(id, '^(%d+)'))
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', ms - tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return id
"""
# The entries after ARGV[1] (at most ARGV[2]) as three strings, their ids, vectors and payloads
# concatenated, so a replica catching up on 100,000 entries parses a few replies, not 600,000;
# then the oldest id the stream still holds ('' if none) and Redis's clock.
_READ = """
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local ids, vectors, payloads = {}, {}, {}
for i, e in ipairs(entries) do
  ids[i], vectors[i], payloads[i] = e[1], e[2][2], e[2][4]
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local t = redis.call('TIME')
return {table.concat(ids, ' '), table.concat(vectors), cjson.encode(payloads),
        first[1] and first[1][1] or '', t[1], t[2]}
"""
_HYPERPLANES = np.random.default_rng(20240611).standard_normal((DIMENSIONS, CODE_BITS)).astype(np.float32)  # fmt: skip


GONE = (2**63, 0)  # above every id: the stream no longer exists, nothing of it is kept


@dataclass(frozen=True)
class Hit:
    payload: str
    similarity: float


def stream_key(prefix: str, scope: str, namespace: str) -> str:
    """One stream per (scope, namespace); hashed, so no choice of names can collide."""
    digest = hashlib.sha256(f"{scope}\0{namespace}".encode()).hexdigest()[:32]
    return f"{prefix}semantic:{digest}"


def parse_id(stream_id: bytes | str) -> tuple[int, int]:
    ms, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).split("-")
    return int(ms), int(seq)


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape != (DIMENSIONS,):
        raise ValueError(f"a vector has {DIMENSIONS} dimensions, not {v.shape[0]}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("a vector must be finite and non-zero")
    return v / norm


def codes(vectors: np.ndarray) -> np.ndarray:
    """Random-hyperplane bits of each row, packed as uint64 words: shape (words, rows), so each
    word is one contiguous array. Two vectors at angle θ differ in each bit with chance θ/π."""
    bits = np.packbits(vectors @ _HYPERPLANES > 0, axis=1)
    return np.ascontiguousarray(bits.view(np.uint64).T)


def hamming_cutoff(threshold: float, bits: int = CODE_BITS) -> int:
    """The most differing bits an entry at `threshold` similarity shows, bar a `MISS_SIGMAS`
    fluke: each bit differs with chance θ/π (θ = arccos threshold), independently."""
    p = math.acos(max(-1.0, min(1.0, threshold))) / math.pi
    return math.ceil(bits * p + MISS_SIGMAS * math.sqrt(bits * p * (1 - p)))


def best_match(
    vectors: np.ndarray, words: np.ndarray, query: np.ndarray, threshold: float
) -> tuple[int, float] | None:
    """(row, similarity) of the nearest unit vector to the unit `query` if it reaches
    `threshold`. Exact up to `EXACT_SCAN_MAX` rows; past it, over the rows whose codes are
    within `hamming_cutoff` of the query's (the `CANDIDATES` nearest of them, if more)."""
    if len(vectors) <= EXACT_SCAN_MAX:
        rows = np.arange(len(vectors))
    else:
        q = codes(query[None, :])[:, 0]
        distance = np.bitwise_count(words[0] ^ q[0])  # uint8: at most 128 bits differ
        for w in range(1, len(words)):
            distance += np.bitwise_count(words[w] ^ q[w])
        rows = np.flatnonzero(distance <= hamming_cutoff(threshold))
        if len(rows) > CANDIDATES:
            rows = rows[np.argpartition(distance[rows], CANDIDATES)[:CANDIDATES]]
    if len(rows) == 0:
        return None
    scores = vectors[rows] @ query
    best = int(np.argmax(scores))
    similarity = min(float(scores[best]), 1.0)  # a unit vector with itself may round above 1
    return (int(rows[best]), similarity) if similarity >= threshold else None


@dataclass
class _Index:
    """One stream's entries in this process, oldest first, in rows [start, end) of arrays that
    grow by doubling; rows below `start` were dropped and are reclaimed on growth."""

    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMENSIONS), np.float32))
    words: np.ndarray = field(default_factory=lambda: np.zeros((CODE_BITS // 64, 0), np.uint64))
    ids: list[tuple[int, int]] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    start: int = 0
    last_id: str = "0-0"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, ids: list[str], fresh: np.ndarray, payloads: list[str]) -> None:
        live = len(self.ids) - self.start
        end, n = self.start + live, len(ids)
        if end + n > len(self.vectors):  # grow, moving the live rows to the front
            capacity = max(1024, 2 * (live + n))
            vectors = np.empty((capacity, DIMENSIONS), np.float32)
            words = np.empty((self.words.shape[0], capacity), np.uint64)
            vectors[:live] = self.vectors[self.start : end]
            words[:, :live] = self.words[:, self.start : end]
            self.vectors, self.words = vectors, words
            # new lists, not trimmed in place: a search's snapshot still indexes the old ones
            self.ids, self.payloads = self.ids[self.start :], self.payloads[self.start :]
            self.start, end = 0, live
        self.vectors[end : end + n] = fresh
        self.words[:, end : end + n] = codes(fresh)
        self.ids += [parse_id(i) for i in ids]
        self.payloads += payloads
        self.last_id = ids[-1]

    def drop_before(self, oldest: tuple[int, int]) -> None:
        self.start = bisect_left(self.ids, oldest, lo=self.start)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of the live rows; appends write only past them and growth allocates anew,
        so a search may read them without the lock."""
        end = len(self.ids)
        return self.vectors[self.start : end], self.words[:, self.start : end]


class SemanticCache:
    """`add` a prompt's vector with a payload; `lookup` the nearest payload above a threshold.
    Thread-safe; one instance per process, sharing entries with every other through Redis."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float, max_entries: int):
        self.client, self.prefix = client, prefix
        self.ttl_ms, self.max_entries = int(ttl_s * 1000), max_entries
        self._indexes: dict[str, _Index] = {}
        self._add = client.register_script(_ADD)
        self._read = client.register_script(_READ)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> SemanticCache:
        return cls(
            client,
            settings.redis_prefix,
            settings.semantic_cache_ttl_s,
            settings.semantic_cache_max_entries,
        )

    def add(self, scope: str, namespace: str, vector: np.ndarray, payload: str) -> None:
        self.add_many(scope, namespace, [vector], [payload])

    def add_many(
        self, scope: str, namespace: str, vectors: Sequence[np.ndarray], payloads: Sequence[str]
    ) -> None:
        """Add entries in order, in one round trip."""
        key = stream_key(self.prefix, scope, namespace)
        pipe = self.client.pipeline(transaction=False)
        for vector, payload in zip(vectors, payloads, strict=True):
            args = [self.max_entries, unit(vector).tobytes(), payload, self.ttl_ms]
            self._add(keys=[key], args=args, client=pipe)
        pipe.execute()

    def lookup(
        self, scope: str, namespace: str, vector: np.ndarray, threshold: float
    ) -> Hit | None:
        """The nearest entry whose cosine similarity to `vector` reaches `threshold`."""
        query = unit(vector)
        index = self._sync(stream_key(self.prefix, scope, namespace))
        with index.lock:
            vectors, words = index.snapshot()
            payloads, start = index.payloads, index.start
        found = best_match(vectors, words, query, threshold)
        if found is None:
            return None
        return Hit(payloads[start + found[0]], found[1])

    def _sync(self, key: str) -> _Index:
        with self._lock:
            index = self._indexes.setdefault(key, _Index())
        with index.lock:
            while True:
                ids, vectors, payloads, first, now_s, now_us = self._read(
                    keys=[key], args=[index.last_id, READ_PAGE]
                )
                if not ids:
                    break
                fresh = np.frombuffer(vectors, np.float32).reshape(-1, DIMENSIONS)
                index.append(ids.decode().split(" "), fresh, json.loads(payloads))
                if len(fresh) < READ_PAGE:
                    break
            expired = (int(now_s) * 1000 + int(now_us) // 1000 - self.ttl_ms, 0)
            index.drop_before(max(expired, parse_id(first) if first else GONE))
        if not first:  # an index of a stream that is gone costs nothing to rebuild
            with self._lock:
                self._indexes.pop(key, None)
        return index
