"""What each pool looks like right now: queue length, jobs in flight, live workers, oldest wait."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session

from llmq import events, job_queries
from llmq.queues import waiting_count


@dataclass(frozen=True)
class Observation:
    model: str
    waiting: int  # messages in the model's Redis queue, every priority list counted
    in_flight: int  # jobs a worker has claimed and not finished
    workers: int  # live heartbeats
    oldest_wait_s: float | None  # age of the oldest queued job


def observe(
    session: Session, client: redis.Redis, prefix: str, models: list[str]
) -> dict[str, Observation]:
    """One read of Postgres (grouped by model) and one of Redis for every pool."""
    activity = job_queries.activity_by_model(session, models)
    workers: dict[str, int] = {}
    for record in events.live_worker_records(client, prefix):
        workers[record.get("model", "")] = workers.get(record.get("model", ""), 0) + 1
    out = {}
    for model in models:
        row = activity.get(model)
        out[model] = Observation(
            model=model,
            waiting=waiting_count(client, model, prefix),
            in_flight=row.running if row is not None else 0,
            workers=workers.get(model, 0),
            oldest_wait_s=row.oldest_queued_s if row is not None else None,
        )
    return out
