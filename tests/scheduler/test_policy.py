"""The scaling policy, as a table: scale up, stabilization, scale to zero, min/max, step, GPUs."""

from __future__ import annotations

import pytest

from scheduler.policy import Decision, Knobs, Memory, Pool, decide, recommended, share_gpus

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
