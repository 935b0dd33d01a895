"""The `hf` engine in-process on the tiny model: per-row budgets, cancellation, context."""

from __future__ import annotations

import pytest

from llmq.catalog import get_catalog
from llmq.settings import get_settings
from workers.engines.base import BatchControl, GenerationRequest


@pytest.fixture(scope="module")
def engine(environment):
    from workers.engines.hf import HFEngine

    return HFEngine(get_catalog().get("tiny"), get_settings())


def req(job_id: str, max_tokens: int, **kw) -> GenerationRequest:
    kw.setdefault("prompt", "Hello there")
    kw.setdefault("temperature", 0.0)  # greedy, so answers can be compared
    return GenerationRequest(job_id=job_id, messages=None, max_tokens=max_tokens, **kw)


def test_rows_keep_their_own_budgets(engine):
    results = engine.generate([req("a", 1), req("b", 6), req("c", 13)])
    assert [r.completion_tokens for r in results] == [1, 6, 13]
    assert all(r.finish_reason == "length" for r in results)


def test_batched_greedy_matches_single(engine):
    single = engine.generate([req("a", 6, prompt="short")])[0]
    batched = engine.generate(
        [
            req("x", 6, prompt="a much longer prompt than the other one"),
            req("a", 6, prompt="short"),
        ]
    )[1]
    assert batched.text == single.text  # left padding does not change the answer


def test_cancelled_row_stops_while_others_continue(engine):
    drop = BatchControl(is_cancelled=lambda jid: jid == "drop")
    results = engine.generate([req("keep", 20), req("drop", 20)], drop)
    assert results[0].finish_reason == "length" and results[0].completion_tokens == 20
    assert results[1].finish_reason == "cancelled" and results[1].completion_tokens <= 2


def test_context_overflow_fails_only_that_row(engine):
    results = engine.generate([req("big", 4, prompt="word " * 300), req("ok", 4)])
    assert results[0].error["code"] == "context_length_exceeded" and results[0].text is None
    assert results[1].succeeded and results[1].completion_tokens == 4


def test_budget_is_clamped_to_the_context(engine):
    prompt_len = len(engine.render(req("p", 1, prompt="word " * 50)))
    (result,) = engine.generate([req("p", 64, prompt="word " * 50)])
    assert result.completion_tokens == min(64, engine.context_length - prompt_len)


def test_messages_use_the_chat_template(engine):
    ids = engine.render(
        GenerationRequest(
            job_id="m", prompt=None, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    )
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nhi<|im_end|>") and text.endswith(
        "<|im_start|>assistant\n"
    )


def test_mixed_batch_lengths_budgets_and_stops(engine):
    (probe,) = engine.generate([req("probe", 12, prompt="Mixed batch")])
    stop = probe.text[len(probe.text) // 2 :][:2]
    results = engine.generate(
        [
            req("long", 3, prompt="a considerably longer prompt with many more words in it"),
            req("stopped", 12, prompt="Mixed batch", stop=[stop]),
            req("short", 7, prompt="hi"),
        ]
    )
    assert [r.completion_tokens for r in (results[0], results[2])] == [3, 7]
    assert results[1].finish_reason == "stop"
    assert results[1].text == probe.text[: probe.text.find(stop)]
    assert all(r.batch_size == 3 for r in results)


def test_out_of_memory_splits_the_batch_and_retries(engine, monkeypatch):
    import torch

    real_generate = engine.model.generate
    sizes: list[int] = []

    def generate_with_small_memory(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        sizes.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("injected: batch too large for the device")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate_with_small_memory)
    results = engine.generate([req(str(i), 4 + i) for i in range(5)])
    assert [r.completion_tokens for r in results] == [4, 5, 6, 7, 8]
    assert all(r.succeeded for r in results)
    assert [r.batch_size for r in results] == [2, 2, 1, 2, 2]  # each ran in the part it fit
    assert sizes == [5, 2, 3, 1, 2]  # 5 fails, 2 runs, 3 fails, 1 and 2 run


def test_token_budget_splits_a_group(environment):
    from workers.engines.hf import HFEngine

    spec = get_catalog().get("tiny").model_copy(update={"max_batch_tokens": 40})
    small = HFEngine(spec, get_settings())
    results = small.generate([req(str(i), 10, prompt="hello") for i in range(4)])
    assert all(r.completion_tokens == 10 for r in results)
    assert max(r.batch_size for r in results) < 4
