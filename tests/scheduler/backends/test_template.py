"""The warm template: the local backend forks workers from it, and starts them plainly when it
is gone, losing nothing."""

from __future__ import annotations

import os
import re
import signal

import redis
import sqlalchemy as sa

from llmq import events
from llmq.db import session_scope
from llmq.models import Job
from llmq.processes import send_signal
from llmq.queues import queue_keys
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, REDIS_URL, kill_pool_workers, wait_for
from tests.scheduler.backends.test_local import local_backend

MODEL = "tiny-template"  # its own pools: these tests kill them


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def run_job(client, auth, model: str) -> dict:
    body = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    return wait_for(
        lambda: (
            j if (j := client.get(f"/v1/jobs/{job['id']}", headers=auth).json())["status"]
            not in ("queued", "running") else None
        ),
        180,
        "the job to finish",
    )  # fmt: skip


def startup_record(model: str, node: str) -> dict:
    client = redis.Redis.from_url(REDIS_URL)
    records = events.live_worker_records(client, get_settings().redis_prefix)
    return next((r for r in records if r.get("node") == node), {})


def test_workers_fork_from_the_template_and_start_plainly_once_it_is_gone(client, auth):
    model = MODEL
    settings = get_settings().model_copy(update={"warm_template": True})
    backend = local_backend([model], "template-workers", settings)
    template = backend.template
    assert template is not None
    try:
        wait_for(template.ready, 300, "the template to finish its imports")
        assert template.gpu  # it never started CUDA: it may fork GPU workers too
        backend.scale(model, 1)
        forked = backend.workers[0]
        assert forked.proc is None and parent_pid(forked.pid) == template.proc.pid
        assert run_job(client, auth, model)["status"] == "succeeded"
        record = wait_for(lambda: startup_record(model, forked.node), 30, "its heartbeat")
        assert set(record["startup_s"]) == {"spawn", "imports", "weights"}

        send_signal(template.proc.pid, signal.SIGKILL)
        wait_for(lambda: not template.alive(), 30, "the template to die")
        backend.tick()
        assert forked.alive()  # the workers it forked serve on
        backend.scale(model, 2)
        plain = next(w for w in backend.workers if w is not forked)
        assert plain.proc is not None  # started as a process of its own
        wait_for(lambda: startup_record(model, plain.node), 300, "the plain worker to serve")
        assert run_job(client, auth, model)["status"] == "succeeded"

        wait_for(lambda: backend.tick() == 0 and template.ready(), 300, "a new template")
        assert template.proc.pid != parent_pid(forked.pid)
    finally:
        backend.close()
        assert not template.alive()
        kill_pool_workers([model])


def test_a_template_that_is_not_ready_forks_nothing(tmp_path):
    from scheduler.backends.template import WarmTemplate

    env = dict(os.environ, LLMQ_CATALOG_PATH=str(tmp_path / "missing.toml"))
    template = WarmTemplate([MODEL], env, tmp_path / "t.log")
    assert template.fork(MODEL, "n@h", {}, None) is None  # never started
    template.start()  # it finds no catalog: it exits before it is ready
    try:
        wait_for(lambda: not template.alive(), 60, "the broken template to exit")
        assert not template.ready()
        assert template.fork(MODEL, "n@h", {}, None) is None
    finally:
        template.stop()


def test_the_scheduler_serves_a_pool_from_zero_through_its_template(client, auth, start_scheduler):
    model = MODEL
    nothing_waiting(model)  # else the scheduler starts a worker before the template is ready
    sched = start_scheduler(model, LLMQ_WARM_TEMPLATE="true")
    found = wait_for(
        lambda: re.search(r"warm template ready \(pid (\d+)\)", sched.output()),
        300,
        "the template to finish its imports",
        process=sched,
    )
    assert run_job(client, auth, model)["status"] == "succeeded"
    assert "from the warm template" in sched.output(), sched.output()[-3000:]
    sched.stop()
    assert not pid_alive(int(found.group(1)))


def nothing_waiting(model: str) -> None:
    """End the model's jobs that earlier tests left queued or claimed (a pool's demand), and
    drop their messages."""
    with session_scope() as session:
        session.execute(
            sa.update(Job)
            .where(Job.model == model, Job.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=sa.func.now())
        )
    redis.Redis.from_url(REDIS_URL).delete(*queue_keys(model, REDIS_PREFIX))


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
