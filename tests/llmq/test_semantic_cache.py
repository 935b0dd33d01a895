"""The semantic cache's store on real Redis: paraphrases hit, the rest miss, scopes stay apart,
processes share one store, and the TTL and size bound hold in Redis and in each index."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from llmq import semantic_cache as sc
from llmq.embeddings import embed
from llmq.semantic_cache import Hit, SemanticCache
from tests.conftest import REDIS_PREFIX, REDIS_URL, wait_for

REPO = Path(__file__).resolve().parents[2]

QUESTION = "What is the capital of France?"
PARAPHRASE = "Tell me France's capital city"  # 0.909 to QUESTION
STATEMENT = "Paris is the capital of France."  # 0.856: related, but not the same question
UNRELATED = "How do I bake bread?"  # 0.148
THRESHOLD = 0.88


def random_units(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, sc.DIMENSIONS), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(vector: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    jitter = np.random.default_rng(seed).standard_normal(sc.DIMENSIONS, dtype=np.float32)
    return sc.unit(vector + noise * jitter)


@pytest.fixture
def cache(redis_client) -> SemanticCache:
    return SemanticCache(redis_client, REDIS_PREFIX, ttl_s=3600, max_entries=1000)


@pytest.fixture
def scope() -> str:
    return f"key-{uuid.uuid4()}"


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [(("a:b", "c"), ("a", "b:c")), (("k", "m@1"), ("k", "m@2")), (("k1", "m"), ("k2", "m"))],
)
def test_each_scope_and_namespace_has_its_own_stream(a, b):
    assert sc.stream_key("p:", *a) != sc.stream_key("p:", *b)
    assert sc.stream_key("p:", *a) == sc.stream_key("p:", *a)
    assert sc.stream_key("p:", *a).startswith("p:semantic:")


@pytest.mark.parametrize(
    ("raw", "parsed"), [(b"1700000000000-0", (1700000000000, 0)), ("5-12", (5, 12))]
)
def test_stream_ids_parse_to_ordered_pairs(raw, parsed):
    assert sc.parse_id(raw) == parsed


@pytest.mark.parametrize(
    "vector", [np.zeros(sc.DIMENSIONS), np.ones(10), np.full(sc.DIMENSIONS, np.nan)]
)
def test_a_vector_must_be_finite_non_zero_and_of_the_models_size(vector):
    with pytest.raises(ValueError):
        sc.unit(vector)


@pytest.mark.parametrize(
    ("rows", "noise", "threshold", "found"),
    [
        (0, 0.0, 0.5, False),  # nothing stored
        (100, 0.0, 0.999, True),  # the very vector
        (100, 0.01, 0.9, True),  # a near one, exact scan
        (100, 0.5, 0.9, False),  # far from all
        (sc.EXACT_SCAN_MAX * 2, 0.01, 0.9, True),  # a near one, through the Hamming candidates
        (sc.EXACT_SCAN_MAX * 2, 0.5, 0.9, False),
    ],
)
def test_best_match_finds_the_nearest_above_the_threshold(rows, noise, threshold, found):
    vectors = random_units(rows)
    target = rows // 3
    query = near(vectors[target], noise) if rows else random_units(1)[0]
    match = sc.best_match(vectors, sc.codes(vectors), query, threshold)
    if not found:
        assert match is None
        return
    assert match is not None
    assert match[0] == target
    assert match[1] == pytest.approx(float(vectors[target] @ query), abs=1e-5)


@pytest.mark.parametrize(
    ("threshold", "cutoff"),
    [(1.0, 0), (0.95, 27), (0.85, 40), (0.5, 64), (0.0, 87), (-1.0, 128)],
)
def test_the_hamming_cutoff_loosens_as_the_threshold_falls(threshold, cutoff):
    assert sc.hamming_cutoff(threshold) == cutoff


def test_past_the_exact_scan_an_entry_near_the_threshold_is_still_found():
    # 200 queries each at about 0.86 to their entry, among 20,000: the cut keeps them.
    vectors = random_units(20_000, seed=11)
    words = sc.codes(vectors)
    rng = np.random.default_rng(12)
    found = 0
    for target in rng.integers(len(vectors), size=200):
        query = near(vectors[target], 0.03, seed=int(target))
        match = sc.best_match(vectors, words, query, 0.8)
        found += match is not None and match[0] == target
    assert found == 200


def test_a_similarity_equal_to_the_threshold_hits():
    vectors = random_units(3)
    similarity = float(vectors[1] @ vectors[1])
    assert sc.best_match(vectors, sc.codes(vectors), vectors[1], min(similarity, 1.0)) is not None


# --- on Redis --------------------------------------------------------------------------------


def test_a_paraphrase_hits_and_an_unrelated_or_merely_related_prompt_misses(cache, scope):
    question, paraphrase, statement, unrelated = embed([QUESTION, PARAPHRASE, STATEMENT, UNRELATED])
    cache.add(scope, "tiny@r1", question, "job-capital")
    hit = cache.lookup(scope, "tiny@r1", paraphrase, THRESHOLD)
    assert hit is not None and hit.payload == "job-capital"
    assert hit.similarity == pytest.approx(0.909, abs=0.005)
    assert cache.lookup(scope, "tiny@r1", statement, THRESHOLD) is None  # 0.856, below
    assert cache.lookup(scope, "tiny@r1", statement, 0.85) is not None  # a lower threshold
    assert cache.lookup(scope, "tiny@r1", unrelated, THRESHOLD) is None
    assert cache.lookup(scope, "tiny@r1", unrelated, 0.5) is None


def test_the_nearest_of_several_entries_answers(cache, scope):
    vectors = random_units(5, seed=3)
    cache.add_many(scope, "m@1", vectors, [f"job-{i}" for i in range(5)])
    assert cache.lookup(scope, "m@1", near(vectors[3], 0.01), 0.9) == Hit(
        "job-3", pytest.approx(float(vectors[3] @ near(vectors[3], 0.01)), abs=1e-5)
    )


@pytest.mark.parametrize("payload", ['{"job": "é✓"}', 'line\nbreak "quoted" \\', ""])
def test_a_payload_comes_back_as_it_was_given(cache, scope, payload):
    vector = random_units(1, seed=13)[0]
    cache.add(scope, "m@1", vector, payload)
    fresh = SemanticCache(cache.client, REDIS_PREFIX, ttl_s=3600, max_entries=1000)
    assert fresh.lookup(scope, "m@1", vector, 0.99).payload == payload


def test_scopes_and_namespaces_do_not_leak(cache, scope):
    vector = random_units(1, seed=4)[0]
    cache.add(scope, "m@1", vector, "job-mine")
    assert cache.lookup(scope, "m@1", vector, 0.99).payload == "job-mine"
    assert cache.lookup(f"other-{scope}", "m@1", vector, 0.5) is None
    assert cache.lookup(scope, "m@2", vector, 0.5) is None  # another revision of the model


def test_two_processes_share_one_store(cache, scope):
    mine, theirs = random_units(2, seed=5)
    assert cache.lookup(scope, "m@1", theirs, 0.9) is None  # this process's index exists, empty
    cache.add(scope, "m@1", mine, "job-parent")
    code = f"""
import numpy as np, redis
from llmq.semantic_cache import SemanticCache
cache = SemanticCache(redis.Redis.from_url({REDIS_URL!r}), {REDIS_PREFIX!r}, 3600, 1000)
mine, theirs = np.frombuffer(bytes.fromhex({(mine.tobytes() + theirs.tobytes()).hex()!r}), np.float32).reshape(2, -1)
print(cache.lookup({scope!r}, "m@1", mine, 0.99).payload)
cache.add({scope!r}, "m@1", theirs, "job-child")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "job-parent"
    assert cache.lookup(scope, "m@1", theirs, 0.99).payload == "job-child"


def test_a_replica_catching_up_reads_every_page_and_searches_past_the_exact_scan(
    redis_client, scope
):
    n = sc.EXACT_SCAN_MAX + sc.READ_PAGE + 7
    vectors = random_units(n, seed=10)
    writer = SemanticCache(redis_client, REDIS_PREFIX, ttl_s=3600, max_entries=n)
    writer.add_many(scope, "m@1", vectors, [f"job-{i}" for i in range(n)])
    fresh = SemanticCache(redis_client, REDIS_PREFIX, ttl_s=3600, max_entries=n)
    for i in (0, n // 2, n - 1):
        assert fresh.lookup(scope, "m@1", near(vectors[i], 0.01), 0.9).payload == f"job-{i}"


def test_entries_expire_after_the_ttl_in_every_index_and_in_redis(redis_client, scope):
    cache = SemanticCache(redis_client, REDIS_PREFIX, ttl_s=0.5, max_entries=1000)
    vector = random_units(1, seed=6)[0]
    cache.add(scope, "m@1", vector, "job-brief")
    assert cache.lookup(scope, "m@1", vector, 0.99) is not None
    wait_for(lambda: cache.lookup(scope, "m@1", vector, 0.5) is None, 10, "the entry expired")
    key = sc.stream_key(REDIS_PREFIX, scope, "m@1")
    wait_for(lambda: not redis_client.exists(key), 10, "the stream expired in Redis")


def test_the_size_bound_holds_in_redis_and_in_an_index_that_saw_more(redis_client, scope):
    writer = SemanticCache(redis_client, REDIS_PREFIX, ttl_s=3600, max_entries=3)
    reader = SemanticCache(redis_client, REDIS_PREFIX, ttl_s=3600, max_entries=3)
    vectors = random_units(5, seed=7)
    writer.add_many(scope, "m@1", vectors[:3], ["job-0", "job-1", "job-2"])
    assert reader.lookup(scope, "m@1", vectors[0], 0.99).payload == "job-0"  # reader saw 0..2
    writer.add_many(scope, "m@1", vectors[3:], ["job-3", "job-4"])
    assert redis_client.xlen(sc.stream_key(REDIS_PREFIX, scope, "m@1")) == 3
    found = [reader.lookup(scope, "m@1", v, 0.99) for v in vectors]
    assert [h.payload if h else None for h in found] == [None, None, "job-2", "job-3", "job-4"]


def test_a_deleted_stream_empties_every_index(cache, redis_client, scope):
    vector = random_units(1, seed=8)[0]
    cache.add(scope, "m@1", vector, "job-gone")
    assert cache.lookup(scope, "m@1", vector, 0.99) is not None
    redis_client.delete(sc.stream_key(REDIS_PREFIX, scope, "m@1"))
    assert cache.lookup(scope, "m@1", vector, 0.5) is None
    cache.add(scope, "m@1", vector, "job-new")
    assert cache.lookup(scope, "m@1", vector, 0.99).payload == "job-new"


def test_threads_add_and_look_up_at_once(cache, scope):
    vectors = random_units(400, seed=9)
    found: list[Hit | None] = [None] * len(vectors)

    def work(part: int) -> None:
        for i in range(part, len(vectors), 8):
            cache.add(scope, "m@1", vectors[i], f"job-{i}")
            found[i] = cache.lookup(scope, "m@1", vectors[i], 0.99)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [h.payload if h else None for h in found] == [f"job-{i}" for i in range(len(vectors))]
