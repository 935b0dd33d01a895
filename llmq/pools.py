"""What each model's pool looks like right now: messages waiting, jobs held in the backlog,
jobs in flight, live workers and the oldest wait. The scheduler, `GET /v1/models` and the queue gauges all read it here.

It is two reads, Redis (`backlogs`) and Postgres (`job_queries.activity_by_model`), each
usable alone, so a reader that must answer while one of them is down (the gauges) still can.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session

from llmq import events
from llmq.job_queries import IDLE, activity_by_model
from llmq.queues import waiting_count


@dataclass(frozen=True)
class Backlog:
    """A model's queue in Redis."""

    waiting: int  # messages in the model's queue, every priority list counted
    workers: int  # live heartbeats


def backlogs(client: redis.Redis, prefix: str, models: list[str]) -> dict[str, Backlog]:
    """The Redis half: one scan of the heartbeats, and each model's queue length."""
    beats = Counter(r.get("model") for r in events.live_worker_records(client, prefix))
    return {m: Backlog(waiting_count(client, m, prefix), beats[m]) for m in models}


@dataclass(frozen=True)
class PoolObservation:
    model: str
    waiting: int  # messages in the model's Redis queue
    in_flight: int  # jobs a worker has claimed and not finished
    workers: int  # live heartbeats
    oldest_wait_s: float | None  # age of the oldest queued job (None: nothing queued)
    backlog: int = 0  # queued jobs in Postgres with no message yet (the feeder's to publish)


def observe_pools(
    session: Session, client: redis.Redis, prefix: str, models: list[str]
) -> dict[str, PoolObservation]:
    """One grouped read of Postgres and one pass over Redis for every pool."""
    activity = activity_by_model(session, models)
    queues = backlogs(client, prefix, models)
    return {
        m: PoolObservation(
            model=m,
            waiting=queues[m].waiting,
            in_flight=activity.get(m, IDLE).running,
            workers=queues[m].workers,
            oldest_wait_s=activity.get(m, IDLE).oldest_queued_s,
            backlog=activity.get(m, IDLE).backlog,
        )
        for m in models
    }
