"""The semantic cache end to end: the in-process API embeds prompts with the real MiniLM
model, a real echo worker answers, Redis holds the shared index."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import LedgerEntry
from tests.api.routes.test_cache import kept
from tests.conftest import CACHE_ON, make_key, serving, wait_final, wait_for

MODEL = "echo-semantic"  # semantic_cache_threshold = 0.88

pytestmark = pytest.mark.usefixtures("cache_on")


@pytest.fixture(scope="module")
def worker(environment):
    yield from serving(MODEL, CACHE_ON)


def ask(client, auth: dict, content: str, **fields) -> dict:
    body = {"model": MODEL, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": content}]} | fields  # fmt: skip
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_paraphrase_gets_the_answer_and_an_unrelated_prompt_runs(client, redis_client, worker):
    auth = {"Authorization": f"Bearer {make_key('semantic')}"}
    first = ask(client, auth, "What is the capital of France?")
    done = wait_final(client, auth, first["id"])
    assert done["status"] == "succeeded" and done["cached"] is False
    wait_for(lambda: kept(redis_client, first["id"]), 30, "the answer to be kept")

    paraphrase = ask(client, auth, "Tell me France's capital city")  # similarity 0.91
    assert paraphrase["status"] == "succeeded" and paraphrase["cached"] is True
    assert paraphrase["output"] == done["output"]
    assert 0.88 <= paraphrase["cache_similarity"] < 1
    with session_scope() as session:
        entry = session.scalars(
            sa.select(LedgerEntry).where(LedgerEntry.job_id == paraphrase["id"])
        ).one()
    assert entry.cached and entry.completion_tokens == done["usage"]["completion_tokens"]

    below = ask(client, auth, "Paris is the capital of France.")  # 0.86: below the threshold
    unrelated = ask(client, auth, "How do I bake bread?")
    for job in (below, unrelated):
        assert job["status"] == "queued" and job["cached"] is False
        assert job["cache_similarity"] is None
        assert wait_final(client, auth, job["id"])["status"] == "succeeded"


def test_other_keys_parameters_and_opt_outs_never_share_an_answer(client, redis_client, worker):
    auth = {"Authorization": f"Bearer {make_key('semantic-a')}"}
    first = ask(client, auth, "Which river flows through Vienna?")
    wait_final(client, auth, first["id"])
    wait_for(lambda: kept(redis_client, first["id"]), 30, "the answer to be kept")
    paraphrase = "Name the river that runs through Vienna"

    other_key = {"Authorization": f"Bearer {make_key('semantic-b')}"}
    assert ask(client, other_key, paraphrase)["cached"] is False
    assert ask(client, auth, paraphrase, max_tokens=9)["cached"] is False  # other parameters
    assert ask(client, auth, paraphrase, cache=False)["cached"] is False
    assert ask(client, auth, paraphrase, temperature=0.7)["cached"] is False  # sampled
    assert ask(client, auth, paraphrase)["cached"] is True
