"""Pure decisions of the batcher: when a batch is complete, which jobs may share one.

No I/O here; `workers/batch_loop.py` feeds these functions what it observes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llmq.generation import GenerationParams

T = TypeVar("T")


@dataclass(frozen=True)
class BatchState:
    """What the runner sees while it collects a batch."""

    pending: int  # jobs handed to the engine and not yet run
    oldest_wait_ms: float  # how long the oldest of them has waited
    idle_ms: float  # time since the last job arrived
    broker_waiting: int  # messages in the model's Redis queue, or taken and not handed in
    last_batch_ms: float | None = None  # how long the previous batch took (None: no batch yet)


def batch_ready(
    state: BatchState, max_batch_size: int, max_batch_wait_ms: float, settle_ms: float
) -> bool:
    """Run now, or wait for companions?

    Run when the batch is full, when the oldest job has waited long enough, or when nothing
    more is on its way: the queue is empty and either no job arrived for `settle_ms` or the
    batch is a lone job (`lone`). A fixed window alone closes batches early while messages
    are still streaming in from Redis.
    """
    if state.pending == 0:
        return False
    if state.pending >= max_batch_size or state.oldest_wait_ms >= max_batch_wait_ms:
        return True
    return state.broker_waiting == 0 and may_run_early(state, settle_ms)


def may_run_early(state: BatchState, settle_ms: float) -> bool:
    """Whether an empty queue would let the batch run before it is full or has waited."""
    return state.idle_ms >= settle_ms or lone(state, settle_ms)


LONE_CONFIRM_MS = 1.0  # a lone job waits this long for messages already on their way


def lone(state: BatchState, settle_ms: float) -> bool:
    """Jobs with nothing else on its way (the caller has seen the queue empty), for an engine
    whose last batch took less than `settle_ms`: waiting for companions that may never come
    would cost them more than a batch of their own costs a job that comes next (it waits at
    most that batch). While the engine keeps up, each job runs at once; once it falls
    behind, the queue fills and batches fill with it. An engine whose batches are slow keeps
    its settle. The jobs still wait `LONE_CONFIRM_MS`: the messages a bulk submit published
    with them reach the worker one BRPOP at a time, and are briefly in neither the queue nor
    the worker's count."""
    return (
        state.idle_ms >= min(settle_ms, LONE_CONFIRM_MS)
        and state.last_batch_ms is not None
        and state.last_batch_ms < settle_ms
    )


def next_check_ms(
    state: BatchState, max_batch_wait_ms: float, settle_ms: float, poll_ms: float
) -> float:
    """How long the batcher may wait for the next job before it must look again: until the
    first of `batch_ready`'s time limits passes (the oldest job's wait, the settle, a lone
    job's confirmation), and never past `poll_ms`, since the queue's length changes unseen.
    Waking on the limit rather than on the poll's next tick saves a lone job up to a tick."""
    limits = (
        max_batch_wait_ms - state.oldest_wait_ms,
        settle_ms - state.idle_ms,
        LONE_CONFIRM_MS - state.idle_ms,
    )
    return min([poll_ms, *(ms for ms in limits if ms > 0)])


def sampling_key(params: GenerationParams) -> Hashable:
    """Jobs with equal keys can run in one `generate` call.

    Greedy jobs all share one key; sampled jobs share only with the same temperature, top_p
    and seed, since those are per-call settings in transformers.
    """
    if params.greedy:
        return ("greedy",)
    return ("sample", params.temperature, params.top_p, params.seed)


def group_by_key(items: Iterable[T], key_of: Any) -> list[list[T]]:
    """Group items by key, keeping first-seen order of keys and of items within a group."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key_of(item), []).append(item)
    return list(groups.values())


def earliest_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the first stop sequence starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def plan_sub_batches(
    prompt_lengths: Sequence[int], max_new_tokens: Sequence[int], max_batch_tokens: int | None
) -> list[list[int]]:
    """Split one group into sub-batches of row indices, shortest prompts first.

    Sorting by length cuts padding; the budget caps the padded size of each sub-batch,
    (longest prompt + largest budget) x rows, so a few long prompts cannot blow up memory.
    A row that alone exceeds the budget still runs, alone.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    if max_batch_tokens is None:
        return [order] if order else []
    batches: list[list[int]] = []
    current: list[int] = []
    width = new = 0
    for i in order:
        w, n = max(width, prompt_lengths[i]), max(new, max_new_tokens[i])
        if current and (w + n) * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current, w, n = [], prompt_lengths[i], max_new_tokens[i]
        current.append(i)
        width, new = w, n
    if current:
        batches.append(current)
    return batches
