"""Circuit breakers: the pure transitions, table-tested, and their shared state in Redis."""

from __future__ import annotations

import pytest

from llmq import breakers
from llmq.breakers import CLOSED, Breaker, Limits

L = Limits(failures=3, window_s=10.0, open_s=5.0, probes=2)
OPEN_AT_100 = Breaker("open", (), 100.0, 0, 1)


@pytest.mark.parametrize(
    ("before", "now", "after"),
    [
        (CLOSED, 1.0, Breaker(failures=(1.0,))),
        (Breaker(failures=(1.0, 2.0)), 3.0, Breaker("open", (), 3.0, 0, 1)),  # third in window
        (Breaker(failures=(1.0, 2.0)), 11.5, Breaker(failures=(2.0, 11.5))),  # 1.0 aged out
        (OPEN_AT_100, 101.0, OPEN_AT_100),  # open stays open, its clock unchanged
        (OPEN_AT_100, 106.0, Breaker("open", (), 106.0, 0, 2)),  # due for probes: reopens
        (Breaker("half_open", (), 105.0, 1, 1), 105.5, Breaker("open", (), 105.5, 0, 2)),
    ],
)
def test_a_failure(before, now, after):
    assert breakers.on_failure(before, now, L) == after


@pytest.mark.parametrize(
    ("before", "now", "after"),
    [
        (Breaker(failures=(1.0,)), 2.0, Breaker(failures=(1.0,))),  # failures age out instead
        (OPEN_AT_100, 101.0, OPEN_AT_100),  # a late success does not close an open circuit
        (OPEN_AT_100, 105.0, Breaker("closed", (), 105.0, 0, 1)),
        (Breaker("half_open", (), 105.0, 1, 1), 106.0, Breaker("closed", (), 106.0, 0, 1)),
    ],
)
def test_a_success(before, now, after):
    assert breakers.on_success(before, now, L) == after


@pytest.mark.parametrize(
    ("before", "now", "after", "admitted"),
    [
        (CLOSED, 1.0, CLOSED, True),
        (OPEN_AT_100, 104.9, OPEN_AT_100, False),
        (OPEN_AT_100, 105.0, Breaker("half_open", (), 105.0, 1, 1), True),  # the first probe
        (Breaker("half_open", (), 105.0, 1, 1), 106.0, Breaker("half_open", (), 105.0, 2, 1), True),
        (
            Breaker("half_open", (), 105.0, 2, 1),
            106.0,
            Breaker("half_open", (), 105.0, 2, 1),
            False,
        ),
        # probes that never reported: new ones pass once another open_s has gone by
        (Breaker("half_open", (), 105.0, 2, 1), 110.0, Breaker("half_open", (), 110.0, 1, 1), True),
    ],
)
def test_admitting_a_job(before, now, after, admitted):
    assert breakers.on_admit(before, now, L) == (after, admitted)


@pytest.mark.parametrize(
    ("breaker", "now", "state"),
    [
        (CLOSED, 0.0, "closed"),
        (OPEN_AT_100, 104.0, "open"),
        (OPEN_AT_100, 105.0, "half_open"),
        (Breaker("half_open", (), 105.0, 2, 1), 200.0, "half_open"),
    ],
)
def test_current_state(breaker, now, state):
    assert breakers.current(breaker, now, L) == state


def test_a_batch_is_folded_in_order():
    assert breakers.record(CLOSED, [False, True, False, False], 1.0, L).state == "open"
    half = Breaker("half_open", (), 105.0, 1, 1)
    assert breakers.record(half, [True, False], 106.0, L) == Breaker(
        "closed", (106.0,), 106.0, 0, 1
    )
    assert breakers.record(half, [False, True], 106.0, L).state == "open"  # reopened first


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        ({"code": "engine_error", "message": "x"}, True),
        ({"code": "upstream_timeout", "message": "x"}, True),
        ({"code": "context_length_exceeded", "message": "x"}, False),
        ({"code": "invalid_messages", "message": "x"}, False),
        (None, False),
    ],
)
def test_only_the_models_own_failures_count(error, counts):
    assert breakers.counts_against_model(error) is counts


def test_the_state_in_redis_is_one_for_every_client(redis_client):
    """Two clients (as two processes would have) record on one breaker and read one state."""
    import redis

    from llmq.catalog import get_catalog
    from tests.conftest import REDIS_PREFIX, REDIS_URL

    spec = (
        get_catalog()
        .get("echo")
        .model_copy(update={"name": "breaker-redis", "breaker_failures": 2})
    )
    other = redis.Redis.from_url(REDIS_URL)
    breakers.record_outcomes(redis_client, REDIS_PREFIX, spec, [False])
    assert breakers.read_states(other, REDIS_PREFIX, [spec]) == {"breaker-redis": "closed"}
    breakers.record_outcomes(other, REDIS_PREFIX, spec, [False])
    assert breakers.read_states(redis_client, REDIS_PREFIX, [spec]) == {"breaker-redis": "open"}
    assert breakers.admit(other, REDIS_PREFIX, spec) is False
    assert (
        breakers.read_breakers(redis_client, REDIS_PREFIX, ["breaker-redis"])[
            "breaker-redis"
        ].opened
        == 1
    )
