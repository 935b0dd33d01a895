"""How many replicas each pool should have: pure functions, table-tested.

The rule is Kubernetes HPA's on the queue (KEDA's Redis-list scaler does the same):
desired = clamp(ceil((waiting + in_flight) / target_backlog_per_replica), min, max), raised to
what the pool's deadlines need (`deadline_replicas`) when that is more.
Growth is immediate; shrinking waits for a stabilization window (the pool shrinks only to the
largest size recommended over the window), and the last replica goes only after an idle
period. Every step changes a pool by at most `max_step` replicas, and GPU pools share the
machine's GPUs by backlog.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Pool:
    """What the scheduler sees of one model's pool at one moment."""

    model: str
    waiting: int
    in_flight: int
    current: int
    min_replicas: int
    max_replicas: int
    target_backlog_per_replica: int
    uses_gpu: bool = False
    deadline_replicas: int = 0  # what finishing every deadline in time takes (unclamped)

    @property
    def backlog(self) -> int:
        return self.waiting + self.in_flight


@dataclass(frozen=True)
class Knobs:
    scale_down_stabilization_s: float = 300.0
    scale_to_zero_idle_s: float = 300.0
    max_step: int = 4


@dataclass(frozen=True)
class Memory:
    """What the policy remembers of a pool between steps."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw recommendation)
    last_busy_s: float | None = None  # last time the pool had a backlog


@dataclass(frozen=True)
class Decision:
    model: str
    current: int
    desired: int
    reason: str
    memory: Memory = field(default_factory=Memory)

    @property
    def changes(self) -> bool:
        return self.desired != self.current


def recommended(pool: Pool) -> int:
    """clamp(max(ceil(backlog / target), deadline replicas), min, max): the size the backlog
    and its deadlines ask for right now."""
    raw = max(math.ceil(pool.backlog / pool.target_backlog_per_replica), pool.deadline_replicas)
    return max(pool.min_replicas, min(pool.max_replicas, raw))


def _for_deadlines(pool: Pool) -> bool:
    """The deadlines, not the queue, set this size."""
    return pool.deadline_replicas > math.ceil(pool.backlog / pool.target_backlog_per_replica)


@dataclass(frozen=True)
class DeadlineWork:
    """Unfinished work that must end by a deadline: a batch's lines, or jobs' `expires_at`."""

    seconds_left: float
    tokens: int  # estimated: prompt estimate + max_tokens of each job
    batch_id: str | None = None


def replicas_by_deadline(work: list[DeadlineWork], tokens_per_s_per_replica: float) -> list[int]:
    """For each item of `work`, the replicas that finish it and everything due before it in
    time, earliest deadline first (EDF: a set of deadlines can be met iff, for every deadline,
    the work due by then fits in the time left). A deadline already past needs what its work
    would take in one second: more than any pool has, so it reads as at risk."""
    order = sorted(range(len(work)), key=lambda i: work[i].seconds_left)
    needed = [0] * len(work)
    due_tokens = 0
    for i in order:
        due_tokens += work[i].tokens
        seconds = max(work[i].seconds_left, 1.0)
        needed[i] = math.ceil(due_tokens / (tokens_per_s_per_replica * seconds))
    return needed


def deadline_replicas(work: list[DeadlineWork], tokens_per_s_per_replica: float | None) -> int:
    """The replicas every deadline needs (0 until a throughput is measured)."""
    if not work or not tokens_per_s_per_replica:
        return 0
    return max(replicas_by_deadline(work, tokens_per_s_per_replica))


def at_risk(
    work: list[DeadlineWork], tokens_per_s_per_replica: float | None, max_replicas: int
) -> list[str]:
    """Batches whose deadline cannot be met even at `max_replicas`."""
    if not work or not tokens_per_s_per_replica:
        return []
    needed = replicas_by_deadline(work, tokens_per_s_per_replica)
    return sorted(
        {w.batch_id for w, n in zip(work, needed, strict=True) if w.batch_id and n > max_replicas}
    )


def decide(pool: Pool, memory: Memory, now_s: float, knobs: Knobs) -> Decision:
    """The pool's next size and the reason, plus the memory to pass to the next call."""
    raw = recommended(pool)
    busy = pool.backlog > 0
    last_busy = now_s if busy else memory.last_busy_s
    if last_busy is None and pool.current > 0:
        last_busy = now_s  # a pool first seen running counts as busy until now
    window_start = now_s - knobs.scale_down_stabilization_s
    if not memory.recommendations:  # first sight: the pool's size counts as recommended now
        memory = Memory(((now_s, pool.current),), memory.last_busy_s)
    history = (*(r for r in memory.recommendations if r[0] > window_start), (now_s, raw))
    memory = Memory(history, last_busy)

    def result(desired: int, reason: str) -> Decision:
        return Decision(pool.model, pool.current, desired, reason, memory)

    if raw > pool.current:
        reason = "scale_up_from_zero" if pool.current == 0 else "scale_up"
        if _for_deadlines(pool):
            reason = "deadline"
        if pool.current < pool.min_replicas and pool.backlog == 0:
            reason = "min_replicas"
        return result(min(raw, pool.current + knobs.max_step), reason)
    if raw == pool.current:
        return result(pool.current, "steady")
    if pool.current > pool.max_replicas:
        return result(max(pool.max_replicas, pool.current - knobs.max_step), "max_replicas")
    # Shrinking: only to the largest size recommended over the window.
    stable = max(n for _, n in history)
    if stable == 0:
        idle_for = math.inf if last_busy is None else now_s - last_busy
        if idle_for < knobs.scale_to_zero_idle_s:
            stable = 1
    target = max(stable, pool.current - knobs.max_step)
    if target >= pool.current:
        return result(pool.current, "stabilizing")
    return result(target, "scale_to_zero" if target == 0 else "scale_down")


def share_gpus(decisions: list[Decision], pools: list[Pool], budget: int) -> list[Decision]:
    """Fit the GPU pools into `budget` GPUs, one per replica, shared by backlog.

    When the GPU pools together want more than the budget, replicas are handed out one at a
    time to the pool with the largest backlog per replica it would then have (D'Hondt), never
    more than a pool asked for. Pools without a backlog come last. CPU pools are untouched.
    """
    by_model = {p.model: p for p in pools}
    gpu = [d for d in decisions if by_model[d.model].uses_gpu]
    if sum(d.desired for d in gpu) <= budget:
        return decisions
    granted = {d.model: 0 for d in gpu}
    wanted = {d.model: d.desired for d in gpu}
    for _ in range(budget):
        open_ = [m for m in granted if granted[m] < wanted[m]]
        if not open_:
            break
        best = max(sorted(open_), key=lambda m: by_model[m].backlog / (granted[m] + 1))
        granted[best] += 1
    out = []
    for d in decisions:
        if d.model in granted and granted[d.model] < d.desired:
            d = replace(d, desired=granted[d.model], reason="gpu_budget")
        out.append(d)
    return out
