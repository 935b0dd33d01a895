"""Scale-down through the local backend while jobs run: none lost, none run twice."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.models import Job, LedgerEntry
from llmq.queues import make_celery
from llmq.settings import Settings, get_settings
from scheduler.backends.local import LocalBackend
from tests.conftest import REDIS_URL, ROOT, kill_pool_workers, wait_for


def local_backend(models: list[str], folder: str, settings: Settings | None = None, **kw):
    """A local backend for these pools, its workers' logs in the run's folder `folder`."""
    settings = settings or get_settings()
    client = redis.Redis.from_url(REDIS_URL)
    return LocalBackend(
        settings, get_catalog(), models, client, make_celery(settings), log_dir=ROOT / folder, **kw
    )


def test_scale_down_while_jobs_run_loses_none_and_runs_none_twice(client, auth):
    model = "pool-drain"
    backend = local_backend([model], "drain-workers")
    try:
        backend.scale(model, 2)
        assert backend.current(model) == 2
        body = {"model": model, "prompt": "a b c", "temperature": 0}
        ids = [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(8)]

        def holders() -> set[str]:
            with session_scope() as session:
                return set(
                    session.scalars(
                        sa.select(Job.worker).where(Job.id.in_(ids), Job.status == "running")
                    )
                )

        wait_for(lambda: len(holders()) == 2, 120, "both workers to hold jobs")
        leaving = max(backend.workers, key=lambda w: w.started_s)
        assert leaving.node in holders()
        backend.scale(model, 1)  # drains the newest worker while it runs a batch
        assert backend.current(model) == 1 and leaving.draining_since is not None

        def settled() -> bool:
            backend.tick()
            with session_scope() as session:
                open_ = session.scalar(
                    sa.select(sa.func.count()).where(
                        Job.id.in_(ids), Job.status.in_(("queued", "running"))
                    )
                )
            return open_ == 0 and not leaving.alive()

        wait_for(settled, 120, "all jobs to finish and the drained worker to exit")
        assert leaving.proc is not None and leaving.proc.returncode == 0  # exited, not killed
        with session_scope() as session:
            rows = session.execute(
                sa.select(Job.status, Job.attempts, Job.worker).where(Job.id.in_(ids))
            ).all()
            ledger = session.execute(
                sa.select(LedgerEntry.job_id, sa.func.count())
                .where(LedgerEntry.job_id.in_(ids))
                .group_by(LedgerEntry.job_id)
            ).all()
        assert all(r.status == "succeeded" and r.attempts == 1 for r in rows), rows
        assert any(r.worker == leaving.node for r in rows)  # it finished what it held
        assert len(ledger) == 8 and all(n == 1 for _, n in ledger)
    finally:
        started = time.monotonic()
        backend.close()
        assert not backend.workers and time.monotonic() - started < 60
        kill_pool_workers([model])


def test_a_pool_whose_workers_keep_dying_backs_off(environment):
    model = "pool-broken"  # its weights do not exist: every worker exits while loading
    backend = local_backend([model], "broken-workers")
    try:
        starts = 0
        for _ in range(2):
            backend.scale(model, 1)
            assert backend.current(model) == 1
            starts += 1
            wait_for(lambda: backend.tick() or backend.current(model) == 0, 120, "the exit")
        backend.scale(model, 1)  # the second exit in a row: held back for a while
        assert backend.current(model) == 0 and starts == 2
        wait_for(lambda: backend.scale(model, 1) or backend.current(model) == 1, 30, "a retry")
    finally:
        backend.close()


def test_only_a_worker_that_serves_ends_its_pools_crash_backoff(redis_client):
    """A worker still loading after HEALTHY_AFTER_S (a loaded machine) is not proof the pool
    works again; one whose heartbeat is up is."""
    from llmq import events
    from scheduler.backends.local import HEALTHY_AFTER_S, LocalWorker

    model = "pool-broken"
    backend = local_backend([model], "slow-crash")
    proc = subprocess.Popen(["sleep", "120"])
    node = f"{model}-pool-slow@test"
    started_s = time.monotonic() - HEALTHY_AFTER_S - 1
    backend.workers.append(LocalWorker(model, node, proc.pid, proc, None, started_s))
    backend._crashes[model] = (2, time.monotonic() + 60)
    heartbeat = events.worker_key(get_settings().redis_prefix, model, node)
    try:
        backend.tick()
        assert backend._crashes[model][0] == 2  # alive, but never served
        redis_client.set(heartbeat, "{}", ex=30)
        backend.tick()
        assert model not in backend._crashes
    finally:
        redis_client.delete(heartbeat)
        proc.kill()
        proc.wait()
        backend.workers.clear()


def _visible_gpus(pid: int) -> str | None:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in raw:
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return item.split(b"=", 1)[1].decode()
    return None


def test_gpu_pools_share_the_devices_one_worker_per_gpu(client, auth):
    from llmq.models import ScalingEvent
    from scheduler.main import Scheduler

    models = ["gpu-a", "gpu-b"]
    settings = get_settings().model_copy(
        update={"scale_down_stabilization_s": 1, "scale_to_zero_idle_s": 2, "sweeper_interval_s": 1}
    )
    backend = local_backend(models, "gpu", settings, gpu_count=1)
    sched = Scheduler(settings, get_catalog(), backend, backend.celery, models, gpu_budget=1)
    body = {"prompt": "a b", "temperature": 0}
    a_ids = [
        client.post("/v1/jobs", json={"model": "gpu-a", **body}, headers=auth).json()["id"]
        for _ in range(4)
    ]
    b_id = client.post("/v1/jobs", json={"model": "gpu-b", **body}, headers=auth).json()["id"]
    seen_gpus: dict[str, set[str | None]] = {m: set() for m in models}
    most_alive = 0
    try:
        first = {d.model: d for d in sched.step()}
        assert first["gpu-a"].desired == 1 and first["gpu-b"].desired == 0
        assert first["gpu-b"].reason == "gpu_budget"  # the larger backlog gets the one GPU

        def b_done() -> bool:
            nonlocal most_alive
            sched.step()
            alive = [w for w in backend.workers if w.alive()]
            most_alive = max(most_alive, len(alive))
            for w in alive:
                with contextlib.suppress(OSError):
                    if (gpus := _visible_gpus(w.pid)) is not None:  # None: it just exited
                        seen_gpus[w.model].add(gpus)
            with session_scope() as session:
                status = session.scalar(sa.select(Job.status).where(Job.id == b_id))
            return status == "succeeded"

        wait_for(b_done, 120, "gpu-b's job, once gpu-a gave the GPU back")
        assert most_alive == 1  # never two GPU workers on one GPU
        assert seen_gpus == {"gpu-a": {"0"}, "gpu-b": {"0"}}
        with session_scope() as session:
            states = session.scalars(sa.select(Job.status).where(Job.id.in_(a_ids))).all()
            reasons = session.scalars(
                sa.select(ScalingEvent.reason).where(ScalingEvent.model == "gpu-a")
            ).all()
        assert set(states) == {"succeeded"}
        assert "gpu_budget" in reasons  # gpu-a was shrunk to make room for gpu-b
    finally:
        backend.close()
        kill_pool_workers(models)
