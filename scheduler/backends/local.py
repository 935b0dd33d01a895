"""Local backend: worker processes on this machine, one GPU each where the pool is on CUDA.

A worker leaving its pool is drained: its consumer is cancelled (it takes no new message),
it finishes the jobs it holds, and only then gets SIGTERM (Celery's warm shutdown). One that
has not exited `drain_timeout_s` later is killed; its heartbeat key is removed and its leases
end, so the sweeper puts its jobs back at once.

Workers this backend starts are named `<model>-pool-<hex>@<host>`; a new leader adopts the
live ones another scheduler on this host left behind (it sees them by their heartbeats).

With `warm_template` on, a new worker is forked from a warm template process that has done
the imports already (`scheduler.backends.template`); while the template is not ready, or once
it has failed, workers start as plain processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
import sqlalchemy as sa
from celery import Celery

from llmq import events, jobs
from llmq.backoff import restart_delay_s
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.models import Job, JobStatus
from llmq.processes import START_REQUESTED_ENV, send_signal, stop_process
from llmq.queues import worker_queues
from llmq.settings import Settings
from scheduler.backends.template import WarmTemplate

log = logging.getLogger("llmq.scheduler")

NODE_MARK = "-pool-"
SETTLE_S = 1.0  # after cancelling the consumer, let held messages reach their claim
HEALTHY_AFTER_S = 30.0  # a worker serving this long resets its pool's crash backoff
MAX_BACKOFF_S = 60.0


def count_gpus() -> int:
    """GPUs on this machine, without importing torch (which would hold a CUDA context)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class LocalWorker:
    model: str
    node: str
    pid: int
    proc: subprocess.Popen | None  # None: forked from the warm template, or adopted
    gpu: int | None
    started_s: float = 0.0
    draining_since: float | None = None
    terminated_at: float | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _alive(self.pid)

    def signal(self, sig: int) -> None:
        send_signal(self.pid, sig)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        models: list[str],
        client: redis.Redis,
        celery: Celery,
        gpu_count: int = 0,
        log_dir: Path | None = None,
    ):
        self.settings, self.catalog, self.redis, self.celery = settings, catalog, client, celery
        self.models = set(models)
        self.gpu_count, self.log_dir = gpu_count, log_dir
        self.host = socket.gethostname()
        self.workers: list[LocalWorker] = []
        # model -> (workers that died on their own in a row, no new start before this time)
        self._crashes: dict[str, tuple[int, float]] = {}
        self._waiting_for_gpu: set[str] = set()
        self.template: WarmTemplate | None = None
        if settings.warm_template and models:
            log_path = log_dir / "warm-template.log" if log_dir is not None else None
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
            self.template = WarmTemplate(sorted(self.models), dict(os.environ), log_path)
            self.template.start()  # it imports while the pools are still idle

    def uses_gpu(self, model: str) -> bool:
        spec = self.catalog.get(model)
        if spec.device.startswith("cuda"):
            return True
        return spec.device == "auto" and spec.loads_weights and self.gpu_count > 0

    # -- the Backend interface --------------------------------------------------------------

    def current(self, model: str) -> int:
        return sum(1 for w in self.workers if w.model == model and w.draining_since is None)

    def running(self, model: str) -> int:
        return self.current(model)

    def scale(self, model: str, replicas: int) -> None:
        serving = [w for w in self.workers if w.model == model and w.draining_since is None]
        crashes, not_before = self._crashes.get(model, (0, 0.0))
        if replicas > len(serving) and time.monotonic() < not_before:
            log.warning("%s workers keep exiting (%d in a row); next start after back-off",
                        model, crashes)  # fmt: skip
            return
        for _ in range(replicas - len(serving)):
            self._start(model)
        if replicas < len(serving):
            newest_first = sorted(serving, key=lambda w: w.started_s, reverse=True)
            for worker in newest_first[: len(serving) - replicas]:
                self._drain(worker)

    def tick(self) -> int:
        self._adopt()
        if self.template is not None:
            self.template.tick()
        killed = 0
        for worker in list(self.workers):
            if not worker.alive():
                self.workers.remove(worker)
                if worker.draining_since is None:
                    # It died holding jobs, maybe: end its leases so they go back now.
                    code = worker.proc.returncode if worker.proc is not None else None
                    log.error("worker %s exited on its own (code %s)", worker.node, code)
                    self._forget(worker)
                    crashes = self._crashes.get(worker.model, (0, 0.0))[0] + 1
                    # the first crash restarts at once; then 2 s, 4 s, ... up to the cap
                    delay = restart_delay_s(crashes - 1, first_s=2.0, cap_s=MAX_BACKOFF_S)
                    self._crashes[worker.model] = (crashes, time.monotonic() + delay)
                    killed += 1
                continue
            if worker.model in self._crashes and self._healthy(worker):
                self._crashes.pop(worker.model, None)
            if worker.draining_since is not None:
                killed += self._progress_drain(worker)
        return killed

    def close(self) -> None:
        """Drain and stop every worker this backend holds (the scheduler is exiting)."""
        for worker in self.workers:
            if worker.draining_since is None:
                self._drain(worker)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 10
        while self.workers and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.2)
        for worker in self.workers:
            self._kill(worker)
        self.workers.clear()
        if self.template is not None:
            self.template.stop()

    # -- starting and stopping --------------------------------------------------------------

    def _start(self, model: str) -> None:
        node = f"{model}{NODE_MARK}{uuid.uuid4().hex[:8]}@{self.host}"
        own_env = {START_REQUESTED_ENV: repr(time.time())}
        gpu = None
        if self.uses_gpu(model):
            taken = {w.gpu for w in self.workers if w.gpu is not None}
            free = [i for i in range(self.gpu_count) if i not in taken]
            if not free:
                if model not in self._waiting_for_gpu:
                    log.warning("no free GPU for another %s worker yet", model)
                    self._waiting_for_gpu.add(model)
                return
            self._waiting_for_gpu.discard(model)
            gpu = free[0]
            own_env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{node.split('@')[0]}.log"
        pid = None
        if self.template is not None:
            pid = self.template.fork(model, node, own_env, log_path, gpu=gpu is not None)
        proc = None
        if pid is None:
            proc = self._spawn(model, node, own_env, log_path)
            pid = proc.pid
        self.workers.append(LocalWorker(model, node, pid, proc, gpu, time.monotonic()))
        log.info(
            "started worker %s (pid %d%s%s)",
            node,
            pid,
            f", GPU {gpu}" if gpu is not None else "",
            "" if proc else ", from the warm template",
        )

    def _spawn(
        self, model: str, node: str, own_env: dict[str, str], log_path: Path | None
    ) -> subprocess.Popen:
        """A worker as a process of its own: the interpreter starts and imports everything."""
        argv = [sys.executable, "-m", "cli", "worker", "--model", model, "--node", node]
        out = log_path.open("ab") if log_path is not None else None
        proc = subprocess.Popen(
            argv,
            env=dict(os.environ, **own_env),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
        if out is not None:
            out.close()
        return proc

    def _drain(self, worker: LocalWorker) -> None:
        worker.draining_since = time.monotonic()
        log.info("draining worker %s", worker.node)
        try:
            for queue in worker_queues(worker.model):
                self.celery.control.cancel_consumer(queue, destination=[worker.node])
        except Exception:  # SIGTERM below drains as well (Celery's warm shutdown)
            log.exception("could not cancel %s's consumer", worker.node)

    def _holds_jobs(self, worker: LocalWorker) -> bool:
        with session_scope() as session:
            held = session.scalar(
                sa.select(sa.func.count()).where(
                    Job.status == JobStatus.RUNNING, Job.worker == worker.node
                )
            )
        return bool(held)

    def _progress_drain(self, worker: LocalWorker) -> int:
        now = time.monotonic()
        timeout = self.settings.drain_timeout_s
        if worker.terminated_at is None:
            settled = now - (worker.draining_since or now) >= SETTLE_S
            if (settled and not self._holds_jobs(worker)) or now - worker.draining_since > timeout:
                worker.signal(signal.SIGTERM)
                worker.terminated_at = now
            return 0
        if now - worker.terminated_at > timeout:
            log.warning("worker %s did not stop within %.0fs; killing it", worker.node, timeout)
            self._kill(worker)
            self.workers.remove(worker)
            return 1
        return 0

    def _kill(self, worker: LocalWorker) -> None:
        if worker.proc is not None:
            stop_process(worker.proc, grace_s=0, reap_s=5)  # its SIGTERM went out while draining
        else:
            worker.signal(signal.SIGKILL)
        self._forget(worker)

    def _forget(self, worker: LocalWorker) -> None:
        """The process is gone: its heartbeat and its leases go with it."""
        try:
            with session_scope() as session:
                jobs.end_leases(session, worker.node)
        except Exception:  # its leases then run out on their own
            log.exception("could not end the leases of %s", worker.node)
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(
                events.worker_key(self.settings.redis_prefix, worker.model, worker.node)
            )

    def _healthy(self, worker: LocalWorker) -> bool:
        """Alive for a while *and* serving (its heartbeat is up): a worker that takes long
        to crash while loading, as on a loaded machine, is not a healthy one."""
        if time.monotonic() - worker.started_s <= HEALTHY_AFTER_S:
            return False
        key = events.worker_key(self.settings.redis_prefix, worker.model, worker.node)
        with contextlib.suppress(redis.RedisError):
            return bool(self.redis.exists(key))
        return False

    def _adopt(self) -> None:
        """Take over live pool workers on this host that no scheduler here is tracking."""
        known = {w.node for w in self.workers}
        try:
            records = events.live_worker_records(self.redis, self.settings.redis_prefix)
        except redis.RedisError:
            return
        for record in records:
            node, model, pid = record.get("node", ""), record.get("model"), record.get("pid")
            if (
                node in known
                or NODE_MARK not in node
                or not node.endswith(f"@{self.host}")
                or model not in self.models
                or not isinstance(pid, int)
                or not _alive(pid)
            ):
                continue
            self.workers.append(LocalWorker(model, node, pid, None, None))
            log.info("adopted worker %s (pid %d)", node, pid)
