"""The scaling policy, as a table: scale up, stabilization, scale to zero, min/max, step, GPUs."""

from __future__ import annotations

import pytest

from scheduler.policy import (
    DeadlineWork,
    Decision,
    Knobs,
    Memory,
    Pool,
    at_risk,
    deadline_replicas,
    decide,
    recommended,
    replicas_by_deadline,
    share_gpus,
)

KNOBS = Knobs(scale_down_stabilization_s=60, scale_to_zero_idle_s=120, max_step=4)


def pool(waiting=0, in_flight=0, current=0, lo=0, hi=8, target=10, gpu=False, model="m"):
    return Pool(model, waiting, in_flight, current, lo, hi, target, gpu)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (pool(), 0),
        (pool(waiting=1), 1),  # one job asks for one replica
        (pool(waiting=10), 1),
        (pool(waiting=11), 2),  # ceil
        (pool(waiting=5, in_flight=6), 2),  # in-flight jobs count as backlog
        (pool(waiting=1000), 8),  # max
        (pool(lo=2), 2),  # min
        (pool(waiting=1, hi=0), 0),  # a pool that may not run
    ],
)
def test_recommended_is_clamped_ceiling_of_backlog_over_target(p, expected):
    assert recommended(p) == expected


# (pool, memory, now, expected desired, expected reason)
CASES = [
    # scale up: at once, from zero on a single job
    (pool(waiting=1), Memory(), 0, 1, "scale_up_from_zero"),
    (pool(waiting=25, current=1), Memory(), 0, 3, "scale_up"),
    # step cap: at most max_step replicas per decision, both ways
    (pool(waiting=80, current=0), Memory(), 0, 4, "scale_up_from_zero"),
    (pool(waiting=1000, hi=20, current=5), Memory(), 0, 9, "scale_up"),
    (pool(waiting=10, current=8), Memory(((0.0, 8),), 10.0), 100, 4, "scale_down"),
    # min / max
    (pool(lo=2, current=0), Memory(), 0, 2, "min_replicas"),
    (pool(lo=2, current=2), Memory(), 0, 2, "steady"),
    (pool(hi=2, current=5, waiting=100), Memory(), 0, 2, "max_replicas"),
    # stabilization: a lower recommendation waits for the window to pass
    (pool(waiting=10, current=3), Memory(((0.0, 3),), 0.0), 30, 3, "stabilizing"),
    (pool(waiting=10, current=3), Memory(((0.0, 3),), 0.0), 61, 1, "scale_down"),
    (pool(waiting=15, current=3), Memory(((0.0, 3), (50.0, 2)), 50.0), 59, 3, "stabilizing"),
    (pool(waiting=15, current=3), Memory(((0.0, 3), (50.0, 2)), 50.0), 61, 2, "scale_down"),
    # scale to zero: only after the idle period, even once the window has passed
    (pool(current=1), Memory(((0.0, 1),), 0.0), 61, 1, "stabilizing"),
    (pool(current=1), Memory(((0.0, 0),), 0.0), 119, 1, "stabilizing"),
    (pool(current=1), Memory(((0.0, 0),), 0.0), 121, 0, "scale_to_zero"),
    (pool(current=1, lo=1), Memory(((0.0, 1),), 0.0), 500, 1, "steady"),
    # a pool first seen (a scheduler just started) keeps its size for a window
    (pool(current=2), Memory(), 1000, 2, "stabilizing"),
    (pool(current=2), Memory(((1000.0, 2),), 1000.0), 1061, 1, "scale_down"),
]


@pytest.mark.parametrize(("p", "memory", "now", "desired", "reason"), CASES)
def test_decide(p, memory, now, desired, reason):
    decision = decide(p, memory, now, KNOBS)
    assert (decision.desired, decision.reason) == (desired, reason)


def test_memory_keeps_only_the_window_and_the_last_busy_time():
    d = decide(pool(waiting=5, current=1), Memory(((0.0, 4), (70.0, 2)), 0.0), 100, KNOBS)
    assert d.memory.recommendations == ((70.0, 2), (100, 1))
    assert d.memory.last_busy_s == 100
    idle = decide(pool(current=1), d.memory, 150, KNOBS)
    assert idle.memory.last_busy_s == 100


def test_a_burst_then_silence_walks_up_then_down_to_zero():
    memory, current, trace = Memory(), 0, []
    for t, waiting in [(0, 1), (1, 40), (2, 40), (30, 0), (70, 0), (100, 0), (140, 0), (200, 0)]:
        d = decide(pool(waiting=waiting, current=current), memory, t, KNOBS)
        memory, current = d.memory, d.desired
        trace.append(current)
    assert trace == [1, 4, 4, 4, 1, 1, 0, 0]


def _wants(model: str, desired: int, current: int = 0) -> Decision:
    return Decision(model, current, desired, "scale_up")


# (pools as (model, backlog, gpu, desired), budget, expected desired per model)
GPU_CASES = [
    # under budget: nothing changes
    ([("a", 10, True, 1), ("b", 10, True, 1)], 2, {"a": 1, "b": 1}),
    # over budget: shared by backlog (D'Hondt), never above what a pool asked for
    ([("a", 90, True, 4), ("b", 30, True, 4)], 4, {"a": 3, "b": 1}),
    ([("a", 50, True, 4), ("b", 50, True, 4)], 4, {"a": 2, "b": 2}),
    ([("a", 100, True, 1), ("b", 10, True, 4)], 4, {"a": 1, "b": 3}),
    # a pool with no backlog gives way to one with a backlog
    ([("a", 0, True, 1), ("b", 5, True, 1)], 1, {"a": 0, "b": 1}),
    # CPU pools do not count against the GPUs
    ([("a", 90, True, 2), ("cpu", 500, False, 8)], 1, {"a": 1, "cpu": 8}),
    # no GPUs: GPU pools get none
    ([("a", 10, True, 1)], 0, {"a": 0}),
]


@pytest.mark.parametrize(("spec", "budget", "expected"), GPU_CASES)
def test_share_gpus(spec, budget, expected):
    pools = [pool(waiting=b, gpu=g, model=m) for m, b, g, _ in spec]
    decisions = [_wants(m, d) for m, _, _, d in spec]
    out = share_gpus(decisions, pools, budget)
    assert {d.model: d.desired for d in out} == expected
    for before, after in zip(decisions, out, strict=True):
        if after.desired < before.desired:
            assert after.reason == "gpu_budget"


def work(seconds_left: float, tokens: int, batch_id: str | None = None) -> DeadlineWork:
    return DeadlineWork(seconds_left, tokens, batch_id)


# (work, tokens/s per replica, replicas each item needs, earliest deadline first)
DEADLINE_CASES = [
    ([], 100.0, []),
    ([work(100, 10_000)], 100.0, [1]),  # 100 s of one replica's work, 100 s left
    ([work(100, 10_001)], 100.0, [2]),  # a token more: two
    ([work(50, 20_000)], 100.0, [4]),  # 200 replica-seconds in 50 s
    # the later deadline carries the earlier one's work too (EDF)
    ([work(100, 10_000), work(200, 10_000)], 100.0, [1, 1]),
    ([work(200, 10_000), work(100, 10_000)], 100.0, [1, 1]),
    ([work(100, 10_000), work(150, 10_000)], 100.0, [1, 2]),
    # a deadline already past asks for its work in one second
    ([work(-5, 300)], 100.0, [3]),
]


@pytest.mark.parametrize(("items", "rate", "needed"), DEADLINE_CASES)
def test_replicas_by_deadline_fit_every_deadline_earliest_first(items, rate, needed):
    assert replicas_by_deadline(items, rate) == needed
    assert deadline_replicas(items, rate) == max(needed, default=0)


def test_no_throughput_measured_yet_asks_for_nothing_and_risks_nothing():
    assert deadline_replicas([work(10, 10**9, "b")], None) == 0
    assert at_risk([work(10, 10**9, "b")], None, 1) == []


def test_a_batch_is_at_risk_when_even_max_replicas_miss_its_deadline():
    items = [work(100, 10_000, "soon"), work(1000, 50_000, "later"), work(50, 1_000_000)]
    assert at_risk(items, 100.0, max_replicas=2) == ["later", "soon"]  # the unnamed work first
    assert at_risk(items, 100.0, max_replicas=200) == []


def test_deadlines_raise_the_queue_size_and_say_so():
    slow = Pool("m", 2, 0, 1, 0, 8, 64, deadline_replicas=3)  # the queue asks for one
    assert recommended(slow) == 3
    decision = decide(slow, Memory(), 0, KNOBS)
    assert (decision.desired, decision.reason) == (3, "deadline")
    capped = Pool("m", 2, 0, 1, 0, 2, 64, deadline_replicas=30)
    assert recommended(capped) == 2
