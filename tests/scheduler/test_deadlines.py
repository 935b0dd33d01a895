"""Deadline-aware scaling with real workers: a pool grows for a batch its queue alone would
leave on one replica, and a batch no pool size can finish in time says so."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis
import sqlalchemy as sa

from llmq import events, job_queries
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.models import Batch, Job
from llmq.settings import get_settings
from scheduler.main import Scheduler
from tests.api.routes import test_chat
from tests.api.routes.test_batches import CHAT, request, upload
from tests.conftest import REDIS_PREFIX, REDIS_URL, kill_pool_workers, make_key, wait_for
from tests.scheduler.backends.test_local import local_backend

MODEL = "deadline-pool"
api, sdk = test_chat.api, test_chat.sdk


def _set_deadline(batch_id: str, seconds: float) -> None:
    """A batch due in `seconds` (the API's shortest window is hours; a test cannot wait)."""
    due = datetime.now(UTC) + timedelta(seconds=seconds)
    with session_scope() as session:
        session.execute(sa.update(Batch).where(Batch.id == batch_id).values(expires_at=due))
        session.execute(sa.update(Job).where(Job.batch_id == batch_id).values(expires_at=due))


def test_a_pool_grows_for_a_deadline_and_a_hopeless_one_is_flagged(api):
    settings = get_settings().model_copy(update={"sweeper_interval_s": 3600})
    backend = local_backend([MODEL], "deadline-workers", settings)
    sched = Scheduler(settings, get_catalog(), backend, backend.celery, [MODEL])
    client = sdk(api, make_key("deadline"))
    try:
        # A first batch measures the pool's throughput on one replica.
        warmup = client.batches.create(
            input_file_id=upload(client, [request(f"w{i}", model=MODEL) for i in range(4)]),
            endpoint=CHAT, completion_window="24h",
        )  # fmt: skip
        with session_scope() as session:
            assert job_queries.tokens_per_s_per_replica(session, [MODEL], timedelta(hours=1)) == {}

        def warmed() -> bool:
            sched.step()
            return client.batches.retrieve(warmup.id).request_counts.completed == 4

        wait_for(warmed, 120, "the warm-up batch")
        with session_scope() as session:
            rates = job_queries.tokens_per_s_per_replica(session, [MODEL], timedelta(hours=1))
        assert rates[MODEL] > 0

        lines = [request(f"d{i}", model=MODEL, max_tokens=2) for i in range(40)]
        batch = client.batches.create(
            input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h"
        )
        with session_scope() as session:
            [(_, _, tokens)] = job_queries.due_work(session, [MODEL])[MODEL]
        # Due when one replica would take 1.5 times as long as is left: two finish in time.
        _set_deadline(batch.id, tokens / rates[MODEL] / 1.5)
        [decision] = sched.step()
        assert (decision.desired, decision.reason) == (2, "deadline")
        assert client.batches.retrieve(batch.id).model_extra["llmq_deadline_at_risk"] is None

        # Due far sooner than two replicas can manage: flagged, for as long as it lasts.
        _set_deadline(batch.id, tokens / rates[MODEL] / 20)
        sched.step()
        risk = client.batches.retrieve(batch.id).model_extra["llmq_deadline_at_risk"]
        assert risk["model"] == MODEL and risk["max_replicas"] == 2
        assert risk["replicas_needed"] > 2
        stored = redis.Redis.from_url(REDIS_URL).get(events.at_risk_key(REDIS_PREFIX, batch.id))
        assert json.loads(stored) == risk
    finally:
        backend.close()
        kill_pool_workers([MODEL])
