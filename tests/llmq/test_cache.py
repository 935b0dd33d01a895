"""The exact cache's decisions (pure) and its store (real Redis)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from llmq import cache
from llmq.cache import Answer, AnswerCache
from llmq.catalog import ModelSpec
from llmq.generation import GenerationParams
from tests.conftest import REDIS_PREFIX, wait_for

GREEDY = GenerationParams(temperature=0, max_tokens=16)
SEEDED = GenerationParams(temperature=0.7, seed=7, max_tokens=16)
SAMPLED = GenerationParams(temperature=0.7, max_tokens=16)


@pytest.mark.parametrize(
    ("params", "determined"),
    [
        (GREEDY, True),
        (SEEDED, True),
        (GenerationParams(temperature=0, seed=3), True),
        (SAMPLED, False),
        (GenerationParams(), False),  # the default temperature is 1
        (GenerationParams(temperature=0.01, top_p=0.1), False),
    ],
)
def test_only_greedy_or_seeded_jobs_are_determined(params, determined):
    assert cache.is_deterministic(params) is determined


def key(**changes) -> str:
    base = {
        "model": "m",
        "revision": "r1",
        "scope": "k1",
        "prompt": None,
        "messages": [{"role": "user", "content": "hi"}],
        "params": GREEDY,
    }
    return cache.cache_key(**(base | changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "m2"},
        {"revision": "r2"},
        {"scope": "k2"},
        {"scope": cache.SHARED_SCOPE},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "system", "content": "hi"}]},
        {"messages": None, "prompt": "hi"},
        {"params": GREEDY.model_copy(update={"max_tokens": 17})},
        {"params": GREEDY.model_copy(update={"top_p": 0.5})},
        {"params": GREEDY.model_copy(update={"stop": ["x"]})},
        {"params": GREEDY.model_copy(update={"seed": 1})},
        {"params": SEEDED},
    ],
    ids=lambda c: ",".join(c),
)
def test_every_input_of_the_answer_changes_the_key(changes):
    assert key(**changes) != key()


def test_equal_requests_hash_equal_however_their_json_was_written():
    shuffled = [{"content": "hi", "role": "user"}]
    assert key(messages=shuffled) == key()
    assert key(params=GenerationParams.from_row(GREEDY.to_row())) == key()
    assert len(key()) == 64 and int(key(), 16) >= 0  # SHA-256, hex


def spec(**fields) -> ModelSpec:
    return ModelSpec(**({"name": "m", "engine": "echo"} | fields))


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        ({"max_new_tokens": 256}, False),
        ({"context_length": 4096}, False),
        ({"dtype": "float16"}, False),
        ({"quantization": "8bit"}, False),
        ({"engine": "hf", "source": {"path": "/models/m"}}, False),
        ({"price_input_per_mtok_usd": Decimal("9")}, True),
        ({"price_cache_hit_per_mtok_usd": Decimal("1")}, True),
        ({"max_batch_size": 64}, True),
        ({"max_replicas": 8}, True),
        ({"description": "another"}, True),
    ],
)
def test_a_catalog_change_that_can_change_output_is_a_new_revision(changes, same):
    assert (cache.model_revision(spec(**changes)) == cache.model_revision(spec())) is same


def test_the_weights_package_version_is_part_of_the_revision():
    def packaged(package: str) -> ModelSpec:
        return ModelSpec(name="m", source={"package": package, "file": "w.gguf"})

    installed = cache.model_revision(packaged("pydantic"))
    assert '"package_version":"2.' in installed  # the installed pydantic's version
    assert '"package_version":""' in cache.model_revision(packaged("no_such_package_here"))


def test_seeded_repeats_within_a_request_use_no_cache():
    keys = ["a", "a", "b", "c", "c", None]
    params = [SEEDED, SEEDED, SEEDED, GREEDY, GREEDY, GREEDY]
    assert cache.usable(keys, params) == [None, None, "b", "c", "c", None]


@pytest.mark.parametrize(
    ("header", "no_store"),
    [
        (None, False),
        ("", False),
        ("no-store", True),
        ("No-Store", True),
        ("max-age=0, no-store", True),
        ("no-cache", False),
        ("no-storex", False),
    ],
)
def test_cache_control_no_store(header, no_store):
    assert cache.no_store(header) is no_store


@pytest.mark.parametrize(
    ("reason", "tokens", "whole"),
    [
        ("stop", 3, True),
        ("length", 16, True),
        ("length", 5, False),  # cut short by the worker's time bound
        ("cancelled", 16, False),
        (None, 0, False),
    ],
)
def test_only_whole_answers_are_kept(reason, tokens, whole):
    assert cache.is_whole_answer(reason, tokens, max_tokens=16) is whole


def store(redis_client, **bounds) -> AnswerCache:
    prefix = f"{REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    settings = {"ttl_s": 60, "max_entry_bytes": 10_000, "max_bytes": 100_000} | bounds
    return AnswerCache(redis_client, prefix, **settings)


def answer(text: str = "hello") -> Answer:
    return Answer(text, "stop", 3, 1)


def test_an_answer_is_kept_and_found(redis_client):
    entries = store(redis_client)
    total = entries.put("k1", answer("héllo"))
    assert entries.get_many(["k1", "k2"]) == [answer("héllo"), None]
    assert total == entries.stored_bytes() == len(answer("héllo").to_bytes())
    entries.put("k1", answer("héllo"))  # stored again: counted once
    assert entries.stored_bytes() == total


def test_an_entry_over_its_bound_is_not_kept(redis_client):
    entries = store(redis_client, max_entry_bytes=50)
    assert entries.put("k", answer("x" * 100)) is None
    assert entries.get_many(["k"]) == [None] and entries.stored_bytes() == 0


def test_the_total_bound_drops_the_oldest(redis_client):
    size = len(answer("a" * 100).to_bytes())
    entries = store(redis_client, max_bytes=3 * size)
    for name in "abcd":
        entries.put(name, answer(name * 100))
    assert entries.get_many(list("abcd")) == [None] + [answer(n * 100) for n in "bcd"]
    assert entries.stored_bytes() == 3 * size


def test_an_entry_expires_and_its_bytes_are_given_back(redis_client):
    entries = store(redis_client, ttl_s=1)
    entries.put("old", answer())
    wait_for(lambda: entries.get_many(["old"]) == [None], 10, "the entry to expire")
    entries.put("new", answer("new"))
    assert entries.stored_bytes() == len(answer("new").to_bytes())


def test_a_zero_ttl_turns_the_cache_off(redis_client):
    entries = store(redis_client, ttl_s=0)
    assert not entries.enabled and entries.put("k", answer()) is None


def test_the_semantic_cache_embeds_contents_and_keys_everything_but_the_prompt():
    from llmq.cache import semantic_namespace, semantic_text
    from llmq.generation import GenerationParams

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert semantic_text(None, messages) == "Be brief.\nHi"
    assert semantic_text("a prompt", None) == "a prompt"
    greedy = GenerationParams(max_tokens=8, temperature=0)
    longer = GenerationParams(max_tokens=9, temperature=0)
    assert semantic_namespace("m", "r1", greedy) == semantic_namespace("m", "r1", greedy)
    assert len({semantic_namespace(*args) for args in [("m", "r1", greedy), ("m", "r2", greedy),
                ("n", "r1", greedy), ("m", "r1", longer)]}) == 4  # fmt: skip
