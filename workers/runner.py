"""The engine thread and the parts it is built from: where task threads hand their jobs.

Task threads call `submit(job_id)` and wait on the returned future. A single thread owns the
model and runs one loop over the jobs handed in: the batch loop (`workers/batch_loop.py`)
for engines that run a batch per call, the continuous loop (`workers/continuous_loop.py`)
for engines with the `ContinuousEngine` interface. Both compose the same parts: the claims
(`workers/claims.py`, whose leases the heartbeat renews) and the result writer
(`workers/results.py`).

No exception ends the engine thread: a failed turn fails the jobs in hand. Should the thread
end anyway, every waiting task is failed at once and `alive` turns false, which stops the
heartbeat and the worker (see `workers/app.py`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import redis

from llmq.announce import Announcer
from llmq.catalog import ModelSpec
from llmq.queues import get_celery
from llmq.settings import Settings
from workers.claims import Claims
from workers.engines.base import ContinuousEngine, Engine
from workers.results import SUPERSEDED, ResultWriter

__all__ = ["SUPERSEDED", "EngineStopped", "Runner", "Waiting"]

log = logging.getLogger(__name__)

HOLD_GRACE_S = 120.0  # a claim is renewed at most this long past max_generation_s (hung engine)


class EngineStopped(RuntimeError):
    """The engine thread is gone; the task should retry on another worker."""


@dataclass
class Waiting:
    """A task thread waiting on its job."""

    job_id: str
    future: Future
    arrived: float


class Loop(Protocol):
    def run(self) -> None:
        """Serve jobs forever; returns only if the thread must end."""
        ...


class Runner:
    """One model's engine thread: the jobs handed in, the claims held, the results written."""

    def __init__(
        self, spec: ModelSpec, engine: Engine | ContinuousEngine, settings: Settings, node: str
    ):
        self.spec, self.engine, self.settings, self.node = spec, engine, settings, node
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.inbox: queue.SimpleQueue[Waiting] = queue.SimpleQueue()
        self.cancelled: set[str] = set()
        self.claims = Claims(
            node,
            timedelta(seconds=settings.job_lease_s),
            settings.max_generation_s + HOLD_GRACE_S,
            spec.name,
        )
        announcer = Announcer.for_settings(settings, self.redis, get_celery())
        self.writer = ResultWriter(spec, self.redis, settings.redis_prefix, self.claims, announcer)
        self.loop = self._loop_for(engine)
        self._open: set[Future] = set()  # futures task threads wait on
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="llmq-engine", daemon=True)

    def _loop_for(self, engine: Engine | ContinuousEngine) -> Loop:
        if isinstance(engine, ContinuousEngine):
            from workers.continuous_loop import ContinuousLoop

            return ContinuousLoop(self, engine)
        from workers.batch_loop import BatchLoop

        return BatchLoop(self, engine)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job_id: str) -> Future:
        future: Future = Future()
        with self._lock:
            if self._stopped:
                future.set_exception(EngineStopped("this worker's engine thread stopped"))
                return future
            self._open.add(future)
        future.add_done_callback(self._settled)
        self.inbox.put(Waiting(job_id, future, time.monotonic()))
        return future

    def mark_cancelled(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    def drain(self) -> list[Waiting]:
        """Every job handed in and not yet taken, without waiting."""
        items = []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                return items

    def next(self, timeout_s: float | None = None) -> list[Waiting]:
        """The next job handed in (waiting up to `timeout_s`; None: until one comes)."""
        with contextlib.suppress(queue.Empty):
            return [self.inbox.get(timeout=timeout_s)]
        return []

    def in_transit(self) -> int:
        """Messages this worker took from Redis whose task has not handed its job in yet:
        they are no longer in the queue, but they are on their way to a batch."""
        from celery.worker import state  # the worker's own bookkeeping of received messages

        with self._lock:
            handed_in = len(self._open)
        return max(0, len(state.reserved_requests) - handed_in)

    def _settled(self, future: Future) -> None:
        with self._lock:
            self._open.discard(future)

    def _serve(self) -> None:
        """The engine thread's body. The loop never returns; if it ends anyway, nobody may
        keep waiting on it."""
        try:
            self.loop.run()
        finally:
            log.critical("the engine thread stopped; this worker takes no more jobs")
            with self._lock:
                self._stopped = True
                waiting = list(self._open)
            for future in waiting:
                if not future.done():
                    future.set_exception(EngineStopped("this worker's engine thread stopped"))


def fail_all(items: list[Waiting], exc: BaseException) -> None:
    """Let every task still waiting on these jobs retry."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
