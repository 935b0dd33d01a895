"""The worker's Celery app: `celery -A workers.app worker --model NAME …` (see `llmq worker`).

A bootstep loads the model once, before the consumer takes any message, and starts the
engine thread, the heartbeat and the cancellation listener.

Each heartbeat refreshes the worker's key in Redis (live workers, metrics targets) and
renews the Postgres leases of the jobs it runs; the leases are what keeps its jobs its own.
A worker whose engine thread has ended stops beating and shuts down, so its jobs go back
once their leases run out instead of waiting on a worker that only looks alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

import click
import redis
from celery import bootsteps, signals
from celery.worker import WorkController

from llmq import events, metrics
from llmq.catalog import get_catalog
from llmq.heap import freeze_startup_heap
from llmq.queues import make_celery
from llmq.settings import get_settings
from workers import startup
from workers.tasks import register_tasks

log = logging.getLogger("llmq.worker")

# Weights come from the catalog's local sources only; never ask a model hub (and never wait on
# one that cannot be reached).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = make_celery()
app.user_options["worker"].add(
    click.Option(["--model"], required=False, help="Catalog model this worker serves.")
)


# A warm shutdown after the engine thread died is still a failure (EX_SOFTWARE), so the
# supervisor restarts the worker instead of reading a clean stop.
ENGINE_STOPPED_EXIT_CODE = 70


class Runtime:
    """What a worker process holds: its model's runner and the threads that keep it known."""

    runner = None  # workers.runner.Runner once the model is loaded

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.exit_code = 0  # non-zero once the worker stops for a reason a supervisor must see
        self.startup_s: dict[str, float] = {}  # the start's parts, once it has started

    def start(self, model_name: str, node: str, concurrency: int) -> None:
        from workers.engines import build_engine
        from workers.runner import Runner

        settings = get_settings()
        spec = get_catalog().get(model_name)
        if concurrency < spec.max_batch_size:
            log.warning(
                "concurrency %d is below max_batch_size %d; batches will be smaller",
                concurrency,
                spec.max_batch_size,
            )
        self.settings, self.model, self.node = settings, model_name, node
        self.redis = redis.Redis.from_url(settings.redis_url)
        engine = build_engine(spec, settings)
        loaded = time.time()
        self.startup_s = startup.parts_s(
            startup.requested_at(),
            startup.process_started_at(),
            startup.weights_started_at(default=loaded),
            loaded,
        )
        self.runner = Runner(spec, engine, settings, node)  # its loop suits the engine
        self.runner.start()
        self.metrics_port = self._serve_metrics(model_name, str(getattr(engine, "device", "cpu")))
        for target in (self._heartbeat, self._listen_cancels):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        freeze_startup_heap()  # the model's and the imports' objects: no full GC pass walks them
        log.info(
            "worker %s serves %s on %s; started in %s",
            node,
            model_name,
            getattr(engine, "device", "?"),
            ", ".join(f"{part} {s:.2f} s" for part, s in self.startup_s.items()),
        )

    def stop(self) -> None:
        self._stop.set()
        if self.runner is not None:
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(
                    events.worker_key(self.settings.redis_prefix, self.model, self.node)
                )

    def _serve_metrics(self, model: str, device: str) -> int | None:
        """This process's /metrics on its own port (one process: no multiprocess mode)."""
        from prometheus_client import REGISTRY

        from workers.device_metrics import DeviceCollector

        REGISTRY.register(DeviceCollector(model, device))
        port = metrics.serve_metrics(self.settings.worker_metrics_port)
        if port:
            log.info("metrics on :%d/metrics", port)
        return port

    def _heartbeat(self) -> None:
        key = events.worker_key(self.settings.redis_prefix, self.model, self.node)
        every = self.settings.worker_heartbeat_s
        value = json.dumps(
            {
                "node": self.node,
                "model": self.model,
                "pid": os.getpid(),
                "metrics_host": metrics.advertised_host(self.settings.metrics_advertise_host),
                "metrics_port": self.metrics_port,
                "startup_s": self.startup_s,
            }
        )
        while not self._stop.is_set():
            if not self.runner.alive:
                self._engine_stopped(key)
                return
            try:
                self.redis.set(key, value, ex=max(1, int(every * 3)))
            except redis.RedisError:
                log.warning("heartbeat to Redis failed")
            self.runner.claims.renew()
            self._stop.wait(every)

    def _engine_stopped(self, key: str) -> None:
        """No engine, no worker: stop looking alive and shut down (warm: the tasks waiting on
        the engine have already been failed, so they retry elsewhere)."""
        log.critical("the engine thread is gone; stopping this worker")
        self.exit_code = ENGINE_STOPPED_EXIT_CODE
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(key)
        self.shut_down()

    def shut_down(self) -> None:
        """Celery's warm shutdown, as on SIGTERM."""
        os.kill(os.getpid(), signal.SIGTERM)

    def _listen_cancels(self) -> None:
        channel = events.cancel_channel(self.settings.redis_prefix)
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and self.runner is not None:
                        self.runner.mark_cancelled(message["data"].decode())
            except redis.RedisError:
                time.sleep(1.0)


runtime = Runtime()
register_tasks(app, runtime)
_workers: list[WorkController] = []


@signals.worker_init.connect
def _remember_worker(sender: WorkController, **_) -> None:
    """Keep the worker so `run_worker` can read its exit code once it has stopped."""
    _workers.append(sender)


def worker_argv(model: str, node: str, concurrency: int | None, loglevel: str) -> list[str]:
    """`celery worker` arguments for a worker of `model`: a threads pool on its queues, as many
    threads as its batches hold unless `concurrency` says otherwise."""
    from llmq.queues import worker_queues

    threads = concurrency or get_catalog().get(model).max_batch_size
    return [
        "worker", "--model", model, "-P", "threads", "-c", str(threads),
        "--prefetch-multiplier", "1", "-Q", ",".join(worker_queues(model)), "-n", node, "-E",
        "--without-mingle", "--without-gossip", "-l", loglevel,
    ]  # fmt: skip


def run_worker(argv: list[str]) -> int:
    """Run `celery worker` in this process and return its exit code.

    `Celery.worker_main` drops the code: a worker that stopped on an unrecoverable error
    would exit 0, which supervisors read as a clean stop and may not restart.
    """
    app.worker_main(argv)
    if not _workers:
        return 1  # the worker was never built: bad arguments or configuration
    return int(_workers[-1].exitcode or 0) or runtime.exit_code


@signals.worker_shutdown.connect
def _close_engine(**_) -> None:
    """After the pool has finished its tasks: stop engine threads that would keep us alive."""
    engine = getattr(runtime.runner, "engine", None)
    if engine is not None and hasattr(engine, "close"):
        engine.close()


class ModelStep(bootsteps.StartStopStep):
    """Load the model after the pool exists and before the consumer starts."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, model: str | None = None, **kwargs):
        super().__init__(worker, **kwargs)
        self.model_name = model or os.environ.get("LLMQ_WORKER_MODEL")

    def start(self, worker) -> None:
        if not self.model_name:
            raise RuntimeError("a worker needs --model NAME (a model from the catalog)")
        runtime.start(self.model_name, worker.hostname, worker.concurrency)

    def stop(self, worker) -> None:
        runtime.stop()


app.steps["worker"].add(ModelStep)
