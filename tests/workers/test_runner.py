"""A worker whose engine thread ends does not keep looking alive, nor keep tasks waiting."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from llmq import events, jobs
from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import Job
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, wait_for
from workers.engines.echo import EchoEngine


class CrashingEngine(EchoEngine):
    """An engine whose failure escapes every `except Exception` (as SystemExit does)."""

    def generate(self, requests, control=None):
        raise SystemExit("the engine crashed")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_when_the_engine_thread_ends_tasks_fail_at_once_and_the_heartbeat_stops(redis_client):
    from workers.app import ENGINE_STOPPED_EXIT_CODE, Runtime
    from workers.runner import EngineStopped, Runner

    spec = get_catalog().get("parked")  # no worker serves it
    settings = get_settings()
    with session_scope() as session:
        key, _ = create_key(session, "engine-thread")
        job_id = str(jobs.create_job(session, key.id, jobs.NewJob("parked", {}, "a b")).id)
    runner = Runner(spec, CrashingEngine(spec), settings, "crash@h")
    runtime = Runtime()
    runtime.settings, runtime.model, runtime.node = settings, "parked", "crash@h"
    runtime.redis, runtime.runner, runtime.metrics_port = redis_client, runner, None
    stopped = threading.Event()
    runtime.shut_down = stopped.set  # instead of SIGTERM to this test process
    runner.start()
    beat = threading.Thread(target=runtime._heartbeat, daemon=True)
    beat.start()
    heartbeat = events.worker_key(REDIS_PREFIX, "parked", "crash@h")
    wait_for(lambda: redis_client.exists(heartbeat), 10, "the first heartbeat")

    future = runner.submit(job_id)
    assert isinstance(future.exception(timeout=30), EngineStopped)
    wait_for(lambda: not runner.alive, 10, "the engine thread to end")
    assert isinstance(runner.submit(job_id).exception(timeout=1), EngineStopped)
    wait_for(stopped.is_set, 10, "the worker to shut down")
    assert runtime.exit_code == ENGINE_STOPPED_EXIT_CODE  # what `llmq worker` exits with
    beat.join(timeout=10)
    assert not beat.is_alive() and not redis_client.exists(heartbeat)
    with session_scope() as session:
        session.execute(sa.delete(Job).where(Job.id == job_id))
