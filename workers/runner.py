"""The engine thread: collects jobs from task threads, forms batches, runs them, writes results.

Task threads call `submit(job_id)` and wait on the returned future. A single thread owns the
model. Per batch: one claim (conditional UPDATE), one generation per compatible group, one
transaction for results and ledger rows, one pipeline of "done" notifications.

Its claims are held in `workers/claims.py`, whose leases the heartbeat renews. No exception
ends the engine thread: a failed turn fails the jobs in hand. Should the thread end anyway,
every waiting task is failed at once and `alive` turns false, which stops the heartbeat and
the worker (see `workers/app.py`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import redis

from llmq import events, jobs, metrics, outbox, ratelimit
from llmq.catalog import ModelSpec
from llmq.db import session_scope
from llmq.ledger import split_gpu_cost_usd, token_cost_usd
from llmq.models import Job
from llmq.queues import get_celery, publish_webhooks, waiting_count
from llmq.settings import Settings
from workers.batching import BatchState, batch_ready, group_by_key, sampling_key
from workers.claims import Claims
from workers.engines.base import Engine, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

BROKER_POLL_MS = 2.0  # how often the queue length is read while a batch fills
HOLD_GRACE_S = 120.0  # a claim is renewed at most this long past max_generation_s (hung engine)
SUPERSEDED = "superseded"  # what a task reports when its claim moved on and wrote nothing


class EngineStopped(RuntimeError):
    """The engine thread is gone; the task should retry on another worker."""


@dataclass
class _Waiting:
    job_id: str
    future: Future
    arrived: float


class BatchRunner:
    def __init__(self, spec: ModelSpec, engine: Engine, settings: Settings, node: str):
        self.spec, self.engine, self.settings, self.node = spec, engine, settings, node
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.inbox: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self.cancelled: set[str] = set()
        self.streamed: dict[str, str] = {}  # job id -> text already on its stream
        self.claims = Claims(
            node,
            timedelta(seconds=settings.job_lease_s),
            settings.max_generation_s + HOLD_GRACE_S,
        )
        self._open: set[Future] = set()  # futures task threads wait on
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="llmq-engine", daemon=True)

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
        self.inbox.put(_Waiting(job_id, future, time.monotonic()))
        return future

    def _settled(self, future: Future) -> None:
        with self._lock:
            self._open.discard(future)

    def _serve(self) -> None:
        """The engine thread's body. `_loop` never returns; if it ends anyway, nobody may keep
        waiting on it."""
        try:
            self._loop()
        finally:
            log.critical("the engine thread stopped; this worker takes no more jobs")
            with self._lock:
                self._stopped = True
                waiting = list(self._open)
            for future in waiting:
                if not future.done():
                    future.set_exception(EngineStopped("this worker's engine thread stopped"))

    def mark_cancelled(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    # -- collecting -------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: list[_Waiting] = []
        while True:
            try:
                pending = self._turn(pending)
            except Exception as exc:  # a bug in one turn costs the jobs in hand, not the thread
                log.exception("engine turn failed with %d jobs in hand", len(pending))
                metrics.ENGINE_ERRORS.labels(self.spec.name).inc()
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(exc)  # the task retries
                pending = []

    def _turn(self, pending: list[_Waiting]) -> list[_Waiting]:
        if not pending:
            pending.append(self.inbox.get())
        pending.extend(self._drain())
        if self._ready(pending):
            size = self.spec.max_batch_size
            batch, pending = pending[:size], pending[size:]
            self._run_batch(batch)
        else:
            with contextlib.suppress(queue.Empty):
                pending.append(self.inbox.get(timeout=BROKER_POLL_MS / 1000))
        return pending

    def _drain(self) -> list[_Waiting]:
        items = []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                return items

    def _ready(self, pending: list[_Waiting]) -> bool:
        now = time.monotonic()
        state = BatchState(
            pending=len(pending),
            oldest_wait_ms=(now - pending[0].arrived) * 1000,
            idle_ms=(now - pending[-1].arrived) * 1000,
            broker_waiting=0,
        )
        limits = (self.spec.max_batch_size, self.spec.max_batch_wait_ms, self.spec.batch_settle_ms)
        quick = batch_ready(state, *limits)
        if quick or state.idle_ms < self.spec.batch_settle_ms:
            return quick
        try:
            waiting = waiting_count(self.redis, self.spec.name, self.settings.redis_prefix)
        except redis.RedisError:
            waiting = 0
        state = BatchState(state.pending, state.oldest_wait_ms, state.idle_ms, waiting)
        return batch_ready(state, *limits)

    # -- running ----------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Waiting]) -> None:
        try:
            finished = self._execute(batch)
        except Exception as exc:  # infrastructure failure: let the tasks retry
            log.exception("batch of %d failed before its results were written", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item in batch:
            item.future.set_result(finished.get(item.job_id, "skipped"))

    def _execute(self, batch: list[_Waiting]) -> dict[str, str]:
        ids = list(dict.fromkeys(uuid.UUID(item.job_id) for item in batch))
        claimed = self.claims.take(ids)
        if not claimed:
            return {}
        try:
            return self._run_claimed(claimed)
        except Exception:
            self._release(claimed)
            raise
        finally:
            self.cancelled.clear()  # cancels that arrive later are seen by the next claim

    def _run_claimed(self, claimed: list[Job]) -> dict[str, str]:
        claimed_at = time.perf_counter()
        self._reset_streams(claimed)
        for job in claimed:
            metrics.QUEUE_WAIT.labels(self.spec.name).observe((job.queue_ms or 0) / 1000)
        deadline = time.monotonic() + self.settings.max_generation_s
        outcomes: list[jobs.Outcome] = []
        for group in group_by_key(claimed, lambda job: sampling_key(job.params)):
            metrics.BATCH_SIZE.labels(self.spec.name).observe(len(group))
            outcomes.extend(self._generate(group, deadline, claimed_at))
        return self._write(claimed, outcomes)

    def _write(self, claimed: list[Job], outcomes: list[jobs.Outcome]) -> dict[str, str]:
        """One transaction for the results, then the notifications that follow a commit.

        Returns what each task reports: the job's outcome, or `superseded` when the finish
        was fenced off (the claim's attempt is no longer current) and nothing was written.
        """
        with session_scope() as session:
            done_ids = jobs.finish_jobs(session, outcomes)
            deliveries = outbox.created_in(session)
        self.claims.let_go(claimed)
        done = set(done_ids)
        self._stream_rest([out for out in outcomes if out.job_id in done])
        events.publish_done(self.redis, self.settings.redis_prefix, [str(i) for i in done_ids])
        publish_webhooks(get_celery(), deliveries)
        self._reconcile_tokens(claimed, outcomes, done)
        reports = {}
        for out in outcomes:
            self.streamed.pop(str(out.job_id), None)
            if out.job_id in done:
                metrics.record_outcome(self.spec.name, out)
                reports[str(out.job_id)] = "succeeded" if out.succeeded else "failed"
            else:
                log.warning("job %s moved on from attempt %d; its result was not written",
                            out.job_id, out.attempt)  # fmt: skip
                reports[str(out.job_id)] = SUPERSEDED
        return reports

    def _release(self, claimed: list[Job]) -> None:
        """Give claimed jobs back to the queue when the batch broke before its results were
        written, so the tasks' retries can claim them again at once."""
        self.claims.let_go(claimed)
        try:
            with session_scope() as session:
                jobs.release_jobs(session, [(job.id, job.attempts) for job in claimed])
        except Exception:
            log.exception(
                "could not release %d claimed jobs; their lease will expire", len(claimed)
            )

    def _reset_streams(self, claimed: list[Job]) -> None:
        """A job claimed again starts its stream afresh, so the stream matches this attempt."""
        for job in claimed:
            self.streamed.pop(str(job.id), None)
        if any(job.attempts > 1 for job in claimed):
            try:
                keys = [events.stream_key(self.settings.redis_prefix, str(j.id)) for j in claimed]
                self.redis.delete(*keys)
            except redis.RedisError:
                log.warning("could not reset streams", exc_info=True)

    def _reconcile_tokens(
        self, claimed: list[Job], outcomes: list[jobs.Outcome], done: set[uuid.UUID]
    ) -> None:
        """Correct each key's per-minute token rate by what its jobs really used: one call per
        key per batch, not per job."""
        used = {o.job_id: o.prompt_tokens + o.completion_tokens for o in outcomes}
        delta_by_key: dict[uuid.UUID, int] = {}
        for job in claimed:
            if job.id in done and job.reserved_tokens is not None:
                delta = used.get(job.id, 0) - job.reserved_tokens
                delta_by_key[job.api_key_id] = delta_by_key.get(job.api_key_id, 0) + delta
        for key_id, delta in delta_by_key.items():
            if not delta:
                continue
            try:
                ratelimit.reconcile_tokens(self.redis, self.settings.redis_prefix, key_id, delta)
            except redis.RedisError:
                log.warning("could not reconcile the token rate of key %s", key_id)

    def _generate(self, group: list[Job], deadline: float, claimed_at: float) -> list[jobs.Outcome]:
        requests = [self._request(job) for job in group]
        started = time.perf_counter()
        try:
            results = self.engine.generate(
                requests, lambda jid: jid in self.cancelled, on_text=self._stream, deadline=deadline
            )
        except Exception as exc:
            log.exception("engine failed on a group of %d", len(group))
            metrics.ENGINE_ERRORS.labels(self.spec.name).inc()
            results = [
                GenerationResult(
                    None,
                    None,
                    error={"code": "engine_error", "message": str(exc)},
                    batch_size=len(group),
                )
            ] * len(group)
        seconds = time.perf_counter() - started
        metrics.INFERENCE_SECONDS.labels(self.spec.name).observe(seconds)
        for job, result in zip(group, results, strict=True):
            if result.first_token_s is not None:
                ttft = (job.queue_ms or 0) / 1000 + (started - claimed_at) + result.first_token_s
                metrics.TIME_TO_FIRST_TOKEN.labels(self.spec.name).observe(ttft)
        gpu_costs = split_gpu_cost_usd(
            seconds,
            self.spec.gpu_hour_usd,
            [r.prompt_tokens + r.completion_tokens if r.succeeded else 0 for r in results],
        )
        return [
            self._outcome(job, result, seconds, gpu_cost)
            for job, result, gpu_cost in zip(group, results, gpu_costs, strict=True)
        ]

    def _outcome(
        self, job: Job, result: GenerationResult, seconds: float, gpu_cost: Decimal
    ) -> jobs.Outcome:
        return jobs.Outcome(
            job_id=job.id,
            attempt=job.attempts,
            succeeded=result.succeeded,
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            error=result.error,
            inference_ms=int(seconds * 1000),
            batch_size=result.batch_size,
            cost_usd=token_cost_usd(
                result.prompt_tokens,
                result.completion_tokens,
                self.spec.price_input_per_mtok_usd,
                self.spec.price_output_per_mtok_usd,
            )
            if result.succeeded
            else Decimal(0),
            gpu_cost_usd=gpu_cost,
        )

    def _stream(self, deltas: dict[str, str]) -> None:
        """Publish text as it is generated; a Redis hiccup costs the stream, never the job."""
        for job_id, text in deltas.items():
            self.streamed[job_id] = self.streamed.get(job_id, "") + text
        try:
            events.append_text(self.redis, self.settings.redis_prefix, deltas)
        except redis.RedisError:
            log.warning("could not publish streamed text", exc_info=True)

    def _stream_rest(self, outcomes: list[jobs.Outcome]) -> None:
        """Whatever final text the stream has not carried yet (held-back tails)."""
        rest = {}
        for out in outcomes:
            sent = self.streamed.get(str(out.job_id), "")
            if out.text and out.text.startswith(sent) and len(out.text) > len(sent):
                rest[str(out.job_id)] = out.text[len(sent) :]
        self._stream(rest)

    def _request(self, job: Job) -> GenerationRequest:
        return GenerationRequest.for_job(
            str(job.id), job.prompt, job.messages, job.params, self.spec.default_max_tokens
        )
