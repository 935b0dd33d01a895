"""Fallback chains: the pure choices, and the catalog's checks on them."""

from __future__ import annotations

import pytest

from llmq import fallbacks
from llmq.catalog import load_catalog
from llmq.errors import CatalogError

CHAIN = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("tried", "states", "expected"),
    [
        (["a"], {}, "b"),
        (["a"], {"b": "open"}, "c"),
        (["a"], {"b": "half_open"}, "b"),
        (["a", "b"], {}, "c"),
        (["a", "b", "c"], {}, None),  # exhausted
        (["a"], {"b": "open", "c": "open"}, None),
        (["b"], {}, "c"),  # routed to b at submit: the chain goes on from there
        (["x"], {}, "a"),  # a model outside the chain starts it
    ],
)
def test_next_model(tried, states, expected):
    assert fallbacks.next_model(CHAIN, tried, states) == expected


@pytest.mark.parametrize(
    ("admitted", "oldest", "bound", "states", "expected"),
    [
        (True, None, None, {}, ("a", None)),
        (False, None, None, {}, ("b", "circuit_open")),
        (False, None, None, {"b": "open"}, ("c", "circuit_open")),
        (False, None, None, {"b": "open", "c": "open"}, ("a", None)),  # nowhere better: stays
        (True, 90.0, 60.0, {}, ("b", "queue_age")),
        (True, 30.0, 60.0, {}, ("a", None)),
    ],
)
def test_at_submit(admitted, oldest, bound, states, expected):
    assert fallbacks.at_submit(CHAIN, admitted, oldest, bound, states) == expected


def test_origin_is_the_model_asked_for():
    assert fallbacks.origin("b", []) == "b"
    assert fallbacks.origin("c", [{"model": "a", "to": "b"}, {"model": "b", "to": "c"}]) == "a"


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('[models.a]\nengine = "echo"\nfallbacks = ["a"]\n', "falls back to itself"),
        ('[models.a]\nengine = "echo"\nfallbacks = ["z"]\n', "unknown fallback 'z'"),
        (
            '[models.a]\nengine = "echo"\nfallbacks = ["b"]\n'
            '[models.b]\nengine = "echo"\nfallbacks = ["a"]\n',
            "lead back to it",
        ),
        (
            '[models.a]\nengine = "echo"\nfallbacks = ["b", "b"]\n[models.b]\nengine = "echo"\n',
            "named twice",
        ),
    ],
)
def test_the_catalog_refuses_bad_chains(tmp_path, tables, message):
    path = tmp_path / "models.toml"
    path.write_text(tables)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_a_good_chain_loads(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.a]\nengine = "echo"\nfallbacks = ["b", "c"]\nfallback_after_queue_s = 30\n'
        '[models.b]\nengine = "echo"\nfallbacks = ["c"]\n[models.c]\nengine = "echo"\n'
    )
    catalog = load_catalog(path)
    assert fallbacks.chain(catalog, "a") == ["a", "b", "c"]
    assert catalog.get("a").breaker_failures == 5  # the defaults


def test_a_move_is_fenced_by_attempt_and_a_claim_by_model(environment):
    """A stale worker moves nothing; a moved job is claimed only by its new model's worker
    (its old message, still on the old queue, finds nothing to claim)."""
    from datetime import timedelta

    from llmq import jobs
    from llmq.db import session_scope
    from llmq.keys import create_key
    from llmq.models import Job

    lease = timedelta(minutes=5)
    with session_scope() as session:
        key, _ = create_key(session, "fallback-moves")
        job_id = jobs.create_job(session, key.id, jobs.NewJob("parked", {}, "a b")).id
        (claimed,) = jobs.claim_jobs(session, [job_id], "w", lease, "parked")
    error = {"code": "engine_error", "message": "boom"}
    with session_scope() as session:
        stale = jobs.Hop(job_id, claimed.attempts - 1, "unserved", "engine_error", error)
        assert jobs.move_failed(session, [stale]) == []
        hop = jobs.Hop(job_id, claimed.attempts, "unserved", "engine_error", error)
        (moved,) = jobs.move_failed(session, [hop])
    assert moved.model == "unserved"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.model, job.worker) == ("queued", "unserved", None)
        (entry,) = job.hops
        assert entry["model"] == "parked" and entry["to"] == "unserved"
        assert entry["reason"] == "engine_error" and entry["error"] == error and entry["at"]
        assert jobs.claim_jobs(session, [job_id], "old", lease, "parked") == []
        assert jobs.claim_jobs(session, [job_id], "new", lease, "unserved")
        session.delete(job)  # its lease would run out under another test's sweeper
