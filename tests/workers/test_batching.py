"""The batcher's pure decisions, table-tested."""

import pytest

from llmq.generation import GenerationParams
from workers.batching import (
    BatchState,
    batch_ready,
    earliest_stop,
    group_by_key,
    next_check_ms,
    plan_sub_batches,
    sampling_key,
)


@pytest.mark.parametrize(
    ("state", "ready"),
    [
        (BatchState(pending=0, oldest_wait_ms=999, idle_ms=999, broker_waiting=0), False),
        (BatchState(pending=8, oldest_wait_ms=0, idle_ms=0, broker_waiting=50), True),  # full
        (BatchState(pending=3, oldest_wait_ms=50, idle_ms=0, broker_waiting=50), True),  # waited
        (BatchState(pending=3, oldest_wait_ms=10, idle_ms=10, broker_waiting=0), True),  # settled
        (BatchState(pending=3, oldest_wait_ms=10, idle_ms=2, broker_waiting=0), False),  # arriving
        (
            BatchState(pending=3, oldest_wait_ms=10, idle_ms=10, broker_waiting=4),
            False,
        ),  # more queued
    ],
)
def test_batch_ready(state, ready):
    assert batch_ready(state, max_batch_size=8, max_batch_wait_ms=50, settle_ms=5) is ready


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"temperature": 0}, {"temperature": 0.0, "top_p": 0.5, "seed": 3}, True),
        ({"temperature": 0.7, "top_p": 1.0}, {"temperature": 0.7, "top_p": 1.0}, True),
        ({"temperature": 0.7}, {"temperature": 0.8}, False),
        ({"temperature": 0.7, "seed": 1}, {"temperature": 0.7, "seed": 2}, False),
        ({"temperature": 0}, {"temperature": 0.7}, False),
    ],
)
def test_sampling_key(a, b, same):
    key_a, key_b = sampling_key(GenerationParams(**a)), sampling_key(GenerationParams(**b))
    assert (key_a == key_b) is same


def test_group_by_key_keeps_order():
    groups = group_by_key([1, 2, 3, 4, 5, 6], lambda n: n % 3)
    assert groups == [[1, 4], [2, 5], [3, 6]]


@pytest.mark.parametrize(
    ("text", "stops", "index"),
    [
        ("hello world", ["world"], 6),
        ("hello world", ["o", "wor"], 4),
        ("hello world", ["xyz"], None),
        ("hello", [], None),
    ],
)
def test_earliest_stop(text, stops, index):
    assert earliest_stop(text, stops) == index


@pytest.mark.parametrize(
    ("lengths", "new", "budget", "plan"),
    [
        ([5, 1, 3], [4, 4, 4], None, [[1, 2, 0]]),  # no budget: one batch, shortest first
        ([10, 1, 2, 9], [2, 2, 2, 2], 24, [[1, 2], [3, 0]]),  # padded size capped
        ([50, 1], [10, 10], 20, [[1], [0]]),  # an oversize row still runs, alone
        ([], [], 100, []),
    ],
)
def test_plan_sub_batches(lengths, new, budget, plan):
    assert plan_sub_batches(lengths, new, budget) == plan


def lone_state(**changes) -> BatchState:
    """One job, 4 ms old, on an engine whose last batch took 3 ms."""
    base = {"pending": 1, "oldest_wait_ms": 4, "idle_ms": 4, "broker_waiting": 0,
            "last_batch_ms": 3}  # fmt: skip
    return BatchState(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "ready"),
    [
        ({}, True),  # nothing coming, and a batch of its own is cheaper than the settle
        ({"broker_waiting": 2}, False),  # companions are queued: wait for them
        ({"last_batch_ms": 40}, False),  # slow batches: one more costs those behind it
        ({"last_batch_ms": None}, False),  # no batch yet to judge the engine by
        ({"pending": 2}, True),  # two that came together after the quiet
        ({"idle_ms": 0.5, "oldest_wait_ms": 0.5}, False),  # just arrived: others may be in flight
    ],
)
def test_a_lone_job_does_not_wait_out_the_settle(changes, ready):
    state = lone_state(**changes)
    assert batch_ready(state, max_batch_size=8, max_batch_wait_ms=50, settle_ms=10) is ready


@pytest.mark.parametrize(
    ("changes", "wait_ms"),
    [
        ({"idle_ms": 1.5, "oldest_wait_ms": 1.5}, 2.0),  # the poll comes first
        ({"idle_ms": 0.25, "oldest_wait_ms": 0.25}, 0.75),  # a lone job's confirmation is due
        ({"idle_ms": 8.5, "oldest_wait_ms": 8.5}, 1.5),  # the settle is due
        ({"idle_ms": 5.0, "oldest_wait_ms": 49.5}, 0.5),  # the oldest job has waited enough
        ({"idle_ms": 30.0, "oldest_wait_ms": 60.0}, 2.0),  # every limit passed: poll the queue
    ],
)
def test_the_batcher_wakes_when_a_limit_passes(changes, wait_ms):
    state = lone_state(**changes)
    assert next_check_ms(state, max_batch_wait_ms=50, settle_ms=10, poll_ms=2) == wait_ms
