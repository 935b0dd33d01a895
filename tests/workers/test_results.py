"""What follows a written batch: the token rate is corrected where the limits live."""

from __future__ import annotations

import redis
import sqlalchemy as sa

from llmq import jobs, ratelimit
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, REDIS_URL
from workers.engines.echo import EchoEngine


def test_a_worker_corrects_token_rates_in_the_rate_limit_redis(redis_client):
    from workers.runner import Runner

    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    limits_url = f"{REDIS_URL.rpartition('/')[0]}/{(db + 1) % 16}"
    limits = redis.Redis.from_url(limits_url)
    settings = get_settings().model_copy(update={"rate_limit_redis_url": limits_url})
    spec = get_catalog().get("parked")  # no worker serves it
    with session_scope() as session:
        key, _ = create_key(session, "token-rates")
        new = jobs.NewJob("parked", {"max_tokens": 2}, "a b c", reserved_tokens=100)
        job_id = str(jobs.create_job(session, key.id, new).id)
    counter = ratelimit.limit_key(REDIS_PREFIX, key.id, "tpm")
    ratelimit.admit(limits, REDIS_PREFIX, key.id, [ratelimit.Rule("tpm", 1000, 100)])
    charged_tat = float(limits.hget(counter, "tat"))
    try:
        runner = Runner(spec, EchoEngine(spec), settings, "token-rates@h")
        runner.start()
        assert runner.submit(job_id).result(timeout=30) == "succeeded"
        # 100 charged, 5 used: 95 tokens of 60/1000 s each come back.
        assert float(limits.hget(counter, "tat")) < charged_tat - 5
    finally:
        limits.delete(counter)
        with session_scope() as session:
            session.execute(sa.delete(Job).where(Job.id == job_id))
