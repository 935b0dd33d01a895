"""The backlog policy, table-tested: priority, then deadline buckets, then weighted fair share."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from llmq.backlog import (
    Candidate,
    deadline_bucket,
    held_keys,
    level,
    pick,
    queue_bound,
    served_after,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def jobs(key: str, n: int, priority: int = 0, expires: timedelta = 24 * HOUR, start: int = 0):
    return [
        Candidate(uuid.uuid4(), key, priority, T0 + expires, T0 + timedelta(seconds=start + i))
        for i in range(n)
    ]


def keys_of(picked: list[Candidate]) -> list[str]:
    return [c.key for c in picked]


@pytest.mark.parametrize(
    ("candidates", "room", "expected"),
    [
        # priority beats everything: B's urgent job first, though A's are older
        (jobs("A", 3) + jobs("B", 1, priority=5, start=10), 2, ["B", "A"]),
        # an earlier deadline bucket goes first, at equal priority
        (jobs("A", 2) + jobs("B", 2, expires=2 * HOUR, start=10), 3, ["B", "B", "A"]),
        # deadlines within one bucket fall through to fair share (equal weights: alternate)
        (
            jobs("A", 3, expires=24 * HOUR)
            + jobs("B", 3, expires=24 * HOUR + timedelta(seconds=60), start=10),
            4,
            ["A", "B", "A", "B"],
        ),
        # no more than the room, and no more than there is
        (jobs("A", 2), 5, ["A", "A"]),
        (jobs("A", 2), 0, []),
    ],
)
def test_pick_orders_by_priority_then_deadline_then_fair_share(candidates, room, expected):
    assert keys_of(pick(candidates, room, {}, {})) == expected


def test_a_keys_own_jobs_keep_their_order():
    a = jobs("A", 5)
    assert pick(list(reversed(a)), 5, {}, {}) == a


def test_weights_split_picks_in_proportion():
    picked = pick(jobs("A", 300) + jobs("B", 300), 300, {}, {"A": 2.0, "B": 1.0})
    assert Counter(keys_of(picked)) == {"A": 200, "B": 100}


def test_the_split_holds_across_rounds_of_small_room():
    served: dict = {}
    weights = {"A": 2.0, "B": 1.0}
    total: Counter = Counter()
    a, b = jobs("A", 400), jobs("B", 400)
    for _ in range(100):  # 100 rounds of 3, as a feeder with a short queue would do
        waiting = a + b
        picked = pick(waiting, 3, served, weights)
        served = served_after(served, [c.key for c in waiting], picked, weights)
        total.update(keys_of(picked))
        a = [c for c in a if c not in picked]
        b = [c for c in b if c not in picked]
    assert total == {"A": 200, "B": 100}


def test_a_newcomer_starts_level_with_the_least_served_key():
    """A key that joins late neither takes every pick (served 0) nor waits behind history."""
    served = {"A": 1000.0}
    picked = pick(jobs("A", 10) + jobs("B", 10, start=100), 4, served, {})
    assert Counter(keys_of(picked)) == {"A": 2, "B": 2}
    assert level({"A": 10.0, "C": 4.0}, ["A", "B"], {"B": 2.0}) == {"A": 10.0, "B": 20.0}


def test_interactive_jobs_go_before_batch_lines_of_their_priority_whatever_the_deadlines():
    lines = [
        Candidate(uuid.uuid4(), "A", 0, T0 + HOUR, T0 + timedelta(seconds=i), batch=True)
        for i in range(4)
    ]
    held = jobs("B", 2, expires=24 * HOUR, start=100)  # interactive, held for a full queue
    urgent_line = Candidate(uuid.uuid4(), "A", 3, T0 + HOUR, T0, batch=True)
    assert pick(lines + held, 3, {}, {}) == [*held, lines[0]]
    assert pick(lines + held + [urgent_line], 1, {}, {}) == [urgent_line]  # priority first


def test_a_short_deadline_batch_overtakes_an_earlier_long_one():
    early_long = jobs("A", 5, expires=24 * HOUR)
    late_short = jobs("A", 5, expires=1 * HOUR, start=1000)
    assert pick(early_long + late_short, 5, {}, {}) == late_short


@pytest.mark.parametrize(
    ("expires", "bucket_s", "expected"),
    [
        (None, 3600, float("inf")),
        (datetime.fromtimestamp(7200, UTC), 3600, 2),
        (datetime.fromtimestamp(7199, UTC), 3600, 1),
        (datetime.fromtimestamp(7199, UTC), 0, 7199),
    ],
)
def test_deadline_bucket(expires, bucket_s, expected):
    assert deadline_bucket(expires, bucket_s) == expected


@pytest.mark.parametrize(
    ("workers", "batch", "depth", "expected"),
    [(0, 8, 2.0, 8), (1, 8, 2.0, 16), (3, 4, 1.5, 18), (1, 8, 0.5, 8)],
)
def test_queue_bound_is_batches_per_worker_and_at_least_one_batch(workers, batch, depth, expected):
    assert queue_bound(workers, batch, depth) == expected


def test_a_key_is_held_while_the_policy_leaves_its_interactive_jobs_waiting():
    def job(key: str, batch: bool = False) -> Candidate:
        return Candidate(uuid.uuid4(), key, 0, T0 + HOUR, T0, batch=batch)

    a1, a2, b1, c_line = job("A"), job("A"), job("B"), job("C", batch=True)
    assert held_keys([a1, a2, b1, c_line], [a1, b1]) == {"A"}  # a batch line holds no key
    assert held_keys([a1, a2, b1, c_line], [a1, a2, b1]) == set()
    assert held_keys([], []) == set()
