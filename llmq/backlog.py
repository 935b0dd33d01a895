"""What the feeder publishes next from a model's backlog, and how deep a queue may be: pure
functions, table-tested.

The order: priority first (higher first); then interactive jobs before batch lines (a job
held because its model's queue was full never waits behind bulk work); then the earlier
deadline, compared in buckets of
`deadline_bucket_s` so near-equal deadlines fall through to fairness; then weighted fair
share across API keys: the key with the least served/weight goes next. Within one key, its
own jobs keep that order, then the older first.

`served` is the feeder's count of the key's recent picks for the model. A key that joins
the backlog starts level with the least-served waiting key (`level`), as in start-time fair
queueing: a newcomer neither starves the others with a count of zero nor waits behind
their history; a key whose backlog empties is forgotten.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

NO_DEADLINE = math.inf


@dataclass(frozen=True)
class Candidate:
    """A backlog job as the policy sees it."""

    id: uuid.UUID
    key: Hashable  # the API key's id
    priority: int  # 0 … 9, higher first
    expires_at: datetime | None
    created_at: datetime
    batch: bool = False  # a batch's line: published on the model's batch lane


def deadline_bucket(expires_at: datetime | None, bucket_s: float) -> float:
    """The deadline's bucket: deadlines in the same `bucket_s` window compare equal."""
    if expires_at is None:
        return NO_DEADLINE
    return math.floor(expires_at.timestamp() / bucket_s) if bucket_s > 0 else expires_at.timestamp()


def level(
    served: Mapping[Hashable, float], keys: Sequence[Hashable], weights: Mapping[Hashable, float]
) -> dict[Hashable, float]:
    """The served counts of the waiting `keys`: a key not counted yet starts at the least
    served/weight of the counted ones, scaled to its own weight; keys not waiting are dropped."""
    counted = [served[k] / weights.get(k, 1.0) for k in keys if k in served]
    floor = min(counted, default=0.0)
    return {k: served[k] if k in served else floor * weights.get(k, 1.0) for k in keys}


def pick(
    candidates: Sequence[Candidate],
    room: int,
    served: Mapping[Hashable, float],
    weights: Mapping[Hashable, float],
    deadline_bucket_s: float = 3600.0,
) -> list[Candidate]:
    """Up to `room` candidates, in the order they should be published.

    `served` counts each key's earlier picks (see `level`); `weights` are the keys' fair-share
    weights (a key absent weighs 1). Every key's candidates must include its best `room`
    jobs, so the choice is the one the whole backlog would give.
    """

    def rank(c: Candidate) -> tuple:
        return (-c.priority, c.batch, deadline_bucket(c.expires_at, deadline_bucket_s))

    queues: dict[Hashable, list[Candidate]] = {}
    for c in sorted(
        candidates, key=lambda c: (*rank(c), c.expires_at or datetime.max, c.created_at)
    ):
        queues.setdefault(c.key, []).append(c)
    for q in queues.values():
        q.reverse()  # pop() from the end takes the key's next job
    counts = level(served, list(queues), weights)
    out: list[Candidate] = []
    while len(out) < room and queues:
        best = min(rank(q[-1]) for q in queues.values())
        tied = [k for k, q in queues.items() if rank(q[-1]) == best]
        key = min(
            tied,
            key=lambda k: (counts[k] / weights.get(k, 1.0), queues[k][-1].created_at, str(k)),
        )
        out.append(queues[key].pop())
        counts[key] += 1
        if not queues[key]:
            del queues[key]
    return out


def served_after(
    served: Mapping[Hashable, float],
    waiting: Sequence[Hashable],
    picked: Sequence[Candidate],
    weights: Mapping[Hashable, float],
) -> dict[Hashable, float]:
    """The feeder's counts for its next round: the waiting keys levelled, plus this round's
    picks."""
    counts = level(served, list(dict.fromkeys(waiting)), weights)
    for c in picked:
        counts[c.key] = counts.get(c.key, 0.0) + 1
    return counts


def held_keys(candidates: list[Candidate], chosen: list[Candidate]) -> set[Hashable]:
    """The keys with interactive jobs the policy left in the backlog this round: past their
    share, so their next interactive submits join them there rather than jump the queue."""
    taken = {c.id for c in chosen}
    return {c.key for c in candidates if not c.batch and c.id not in taken}


def queue_bound(workers: int, max_batch_size: int, depth_per_worker: float) -> int:
    """Messages a model's Redis queue may hold: `depth_per_worker` batches for each live
    worker, and never less than one batch, so a pool at zero still has work waiting the
    moment its first worker starts."""
    return max(max_batch_size, math.ceil(workers * max_batch_size * depth_per_worker))
