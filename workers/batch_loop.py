"""The batch loop: collect jobs into a batch, run it, write it; for `hf` and `echo`.

Per batch: one claim (conditional UPDATE), one generation per group of compatible sampling
settings, one transaction for results and ledger rows, one pipeline of "done" notifications
(`workers/results.py`). When a batch is complete is decided in `workers/batching.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING

import redis

from llmq import jobs, metrics
from llmq.ledger import split_gpu_cost_usd
from llmq.models import Job
from llmq.queues import waiting_count
from workers.batching import (
    BatchState,
    batch_ready,
    group_by_key,
    may_run_early,
    next_check_ms,
    sampling_key,
)
from workers.engines.base import (
    BatchControl,
    Engine,
    GenerationRequest,
    GenerationResult,
    failure,
)
from workers.runner import Waiting, fail_all

if TYPE_CHECKING:
    from workers.runner import Runner

log = logging.getLogger(__name__)

BROKER_POLL_MS = 2.0  # how often the queue length is read while a batch fills


class BatchLoop:
    def __init__(self, runner: Runner, engine: Engine):
        self.runner, self.engine, self.spec = runner, engine, runner.spec
        self.writer, self.claims = runner.writer, runner.claims
        self.last_batch_ms: float | None = None

    def run(self) -> None:
        pending: list[Waiting] = []
        while True:
            try:
                pending = self._turn(pending)
            except Exception as exc:  # a bug in one turn costs the jobs in hand, not the thread
                log.exception("engine turn failed with %d jobs in hand", len(pending))
                metrics.ENGINE_ERRORS.labels(self.spec.name).inc()
                fail_all(pending, exc)  # the tasks retry
                pending = []

    def _turn(self, pending: list[Waiting]) -> list[Waiting]:
        if not pending:
            pending += self.runner.next()
        pending += self.runner.drain()
        state = self._state(pending)
        if self._ready(state):
            size = self.spec.max_batch_size
            batch, pending = pending[:size], pending[size:]
            started = time.monotonic()
            self._run_batch(batch)
            self.last_batch_ms = (time.monotonic() - started) * 1000
        else:
            limits = (self.spec.max_batch_wait_ms, self.spec.batch_settle_ms, BROKER_POLL_MS)
            pending += self.runner.next(next_check_ms(state, *limits) / 1000)
        return pending

    def _state(self, pending: list[Waiting]) -> BatchState:
        now = time.monotonic()
        return BatchState(
            pending=len(pending),
            oldest_wait_ms=(now - pending[0].arrived) * 1000,
            idle_ms=(now - pending[-1].arrived) * 1000,
            broker_waiting=1,  # until Redis says otherwise
            last_batch_ms=self.last_batch_ms,
        )

    def _ready(self, state: BatchState) -> bool:
        limits = (self.spec.max_batch_size, self.spec.max_batch_wait_ms, self.spec.batch_settle_ms)
        if batch_ready(state, *limits):
            return True
        if not may_run_early(state, self.spec.batch_settle_ms):
            return False  # no need to ask Redis
        settings = self.runner.settings
        try:
            waiting = waiting_count(self.runner.redis, self.spec.name, settings.redis_prefix)
        except redis.RedisError:
            waiting = 0
        waiting += self.runner.in_transit()
        return batch_ready(dataclasses.replace(state, broker_waiting=waiting), *limits)

    def _run_batch(self, batch: list[Waiting]) -> None:
        try:
            finished = self._execute(batch)
        except Exception as exc:  # infrastructure failure: let the tasks retry
            log.exception("batch of %d failed before its results were written", len(batch))
            fail_all(batch, exc)
            return
        for item in batch:
            item.future.set_result(finished.get(item.job_id, "skipped"))

    def _execute(self, batch: list[Waiting]) -> dict[str, str]:
        ids = list(dict.fromkeys(uuid.UUID(item.job_id) for item in batch))
        claimed = self.claims.take(ids)
        if not claimed:
            return {}
        try:
            return self._run_claimed(claimed)
        except Exception:
            self.writer.release(claimed)
            raise
        finally:
            self.runner.cancelled.clear()  # cancels that arrive later are seen by the next claim

    def _run_claimed(self, claimed: list[Job]) -> dict[str, str]:
        claimed_at = time.perf_counter()
        self.writer.reset_streams(claimed)
        for job in claimed:
            metrics.QUEUE_WAIT.labels(self.spec.name).observe((job.queue_ms or 0) / 1000)
        deadline = time.monotonic() + self.runner.settings.max_generation_s
        outcomes: list[jobs.Outcome] = []
        for group in group_by_key(claimed, self._group_key):
            metrics.BATCH_SIZE.labels(self.spec.name).observe(len(group))
            outcomes.extend(self._generate(group, deadline, claimed_at))
        return self.writer.write(claimed, outcomes)

    def _group_key(self, job: Job) -> object:
        """Jobs that may share one `generate` call: an engine that sends each job on its own
        (a remote one) takes the whole batch at once."""
        if not getattr(self.engine, "groups_by_sampling", True):
            return None
        return sampling_key(job.params)

    def _generate(self, group: list[Job], deadline: float, claimed_at: float) -> list[jobs.Outcome]:
        requests = [GenerationRequest.for_job(job, self.spec.default_max_tokens) for job in group]
        started = time.perf_counter()
        try:
            control = BatchControl(
                lambda jid: jid in self.runner.cancelled, self.writer.stream, deadline
            )
            results = self.engine.generate(requests, control)
        except Exception as exc:
            log.exception("engine failed on a group of %d", len(group))
            metrics.ENGINE_ERRORS.labels(self.spec.name).inc()
            broken = failure("engine_error", str(exc))
            broken.batch_size = len(group)
            results = [broken] * len(group)
        seconds = time.perf_counter() - started
        metrics.INFERENCE_SECONDS.labels(self.spec.name).observe(seconds)
        self._observe_first_tokens(group, results, started - claimed_at)
        gpu_costs = split_gpu_cost_usd(
            seconds,
            self.spec.gpu_hour_usd,
            [r.prompt_tokens + r.completion_tokens if r.succeeded else 0 for r in results],
        )
        return [
            self.writer.outcome(job, result, seconds, gpu_cost)
            for job, result, gpu_cost in zip(group, results, gpu_costs, strict=True)
        ]

    def _observe_first_tokens(
        self, group: list[Job], results: list[GenerationResult], setup_s: float
    ) -> None:
        """Time to first token as a client sees it: queue wait, batch setup, generation."""
        for job, result in zip(group, results, strict=True):
            if result.first_token_s is not None:
                ttft = (job.queue_ms or 0) / 1000 + setup_s + result.first_token_s
                metrics.TIME_TO_FIRST_TOKEN.labels(self.spec.name).observe(ttft)
