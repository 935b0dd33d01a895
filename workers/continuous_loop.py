"""The engine loop for continuous batching: jobs join the running batch as they arrive.

Unlike the batch runner, nothing waits for a batch to fill. Each loop turn claims the jobs
that arrived (one UPDATE), hands them to the engine, reads the tokens every running job
produced, streams them, stops jobs that hit a stop sequence or were cancelled, and writes the
jobs that ended, many per transaction, through the result writer both loops compose
(`workers/results.py`). The engine is any `ContinuousEngine` (`workers/engines/base.py`).

A turn that raises fails the jobs in hand (written as `engine_error`) and the loop goes on
with an empty batch; one job's bad input (a chat template that rejects its messages) fails
that job alone, before it joins the batch.

GPU time is charged per job as its share of each interval it ran in: an interval in which n
jobs ran adds 1/n of it to each, so the shares add up to the time the device was busy.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from llmq import metrics
from llmq.ledger import gpu_seconds_cost_usd
from llmq.models import Job
from workers.batching import earliest_stop
from workers.engines.base import ContinuousEngine, GenerationRequest, GenerationResult, failure
from workers.runner import Waiting, fail_all

if TYPE_CHECKING:
    from workers.runner import Runner

log = logging.getLogger(__name__)

POLL_S = 0.005  # how long one turn waits for tokens while jobs run
WRITE_EVERY_S = 0.02  # ended jobs wait at most this long to share a transaction


@dataclass
class _Ended:
    job: Job
    result: GenerationResult
    seconds: float = 0.0
    gpu_cost_usd: Decimal = Decimal(0)


@dataclass
class _Running:
    job: Job
    request: GenerationRequest
    prompt_tokens: int
    joined_with: int  # jobs in the running batch when this one joined
    started: float = field(default_factory=time.perf_counter)
    gpu_seconds: float = 0.0  # its share of the device's time: each interval split evenly
    text: str = ""
    stopped: str | None = None  # finish reason forced here: stop sequence, cancel, time bound


class ContinuousLoop:
    def __init__(self, runner: Runner, engine: ContinuousEngine):
        self.runner, self.engine, self.spec = runner, engine, runner.spec
        self.writer, self.claims, self.cancelled = runner.writer, runner.claims, runner.cancelled

    def run(self) -> None:
        waiting: dict[str, list[Waiting]] = {}
        running: dict[str, _Running] = {}
        ended: list[_Ended] = []
        self.last_write = self._last_tick = time.perf_counter()
        while True:
            try:
                self._turn(waiting, running, ended)
            except Exception as exc:  # a bug in one turn costs the jobs in hand, not the thread
                log.exception("engine turn failed with %d jobs running", len(running))
                metrics.ENGINE_ERRORS.labels(self.spec.name).inc()
                self._abandon(waiting, running, ended, exc)

    def _turn(self, waiting, running, ended: list[_Ended]) -> None:
        arrivals = self.runner.drain()
        if not arrivals and not running and not ended:
            arrivals = self.runner.next()
        for item in arrivals:
            waiting.setdefault(item.job_id, []).append(item)
        fresh = [job_id for job_id in waiting if job_id not in running]
        if not running:
            self._last_tick = time.perf_counter()  # idle time is nobody's
        if fresh:
            ended += self._admit(fresh, running, waiting)
        if running:
            ended += self._collect(running)
            self.cancelled.intersection_update(running)  # the rest will never be claimed
        due = time.perf_counter() - self.last_write >= WRITE_EVERY_S or not running
        if ended and due:
            batch = ended[:]
            ended.clear()
            self._finish(batch, waiting)
            self.last_write = time.perf_counter()

    def _abandon(self, waiting, running, ended: list[_Ended], exc: Exception) -> None:
        """After a failed turn: fail every job in hand, and let every waiting task retry."""
        error = failure("engine_error", f"the engine failed: {exc}")
        in_hand = {str(job.id): job for job in self.claims.in_hand()}
        for job_id in running:
            with contextlib.suppress(Exception):
                self.engine.cancel(job_id)
        ended_ids = {str(e.job.id) for e in ended}
        lost = [job for job_id, job in in_hand.items() if job_id not in ended_ids]
        batch = ended[:] + [_Ended(job, error) for job in lost]
        running.clear()
        ended.clear()
        try:
            self._finish(batch, waiting)
        except Exception:  # its claims' leases run out and the sweeper takes the jobs back
            log.exception("could not fail the %d jobs in hand", len(batch))
            self.claims.let_go([e.job for e in batch])
        for items in waiting.values():
            fail_all(items, exc)  # the tasks retry
        waiting.clear()

    def _admit(self, job_ids, running, waiting) -> list[_Ended]:
        """Claim newly arrived jobs and add them to the running batch."""
        try:
            claimed = self.claims.take([uuid.UUID(j) for j in job_ids])
        except Exception as exc:
            log.exception("could not claim %d jobs", len(job_ids))
            for job_id in job_ids:
                for item in waiting.pop(job_id, []):
                    item.future.set_exception(exc)
            return []
        claimed_ids = {str(job.id) for job in claimed}
        for job_id in job_ids:
            if job_id not in claimed_ids:  # finished, cancelled or held elsewhere
                for item in waiting.pop(job_id, []):
                    item.future.set_result("skipped")
        self.writer.reset_streams(claimed)
        failed = []
        for job in claimed:
            metrics.QUEUE_WAIT.labels(self.spec.name).observe((job.queue_ms or 0) / 1000)
            request = GenerationRequest.for_job(job, self.spec.default_max_tokens)
            prompt, refused = self.engine.prepare(request)
            if refused is not None:
                failed.append(_Ended(job, refused))
                continue
            room = self.engine.context_length - len(prompt)
            try:
                self.engine.add(request, prompt, min(request.max_tokens, room))
            except Exception as exc:
                log.exception("the engine refused job %s", job.id)
                failed.append(_Ended(job, failure("engine_error", f"the engine failed: {exc}")))
                continue
            running[str(job.id)] = _Running(job, request, len(prompt), len(running) + 1)
        return failed

    def _collect(self, running: dict[str, _Running]) -> list[_Ended]:
        """Read what the engine produced; return the jobs that ended."""
        deltas: dict[str, str] = {}
        ended = []
        outputs = self.engine.poll(POLL_S)
        self._share_time(running)
        for output in outputs:
            run = running.get(output.request_id)
            if run is None:
                continue
            tokens = list(output.generated_tokens)
            text = self.engine.decode(tokens)
            cut = earliest_stop(text, run.request.stop)
            if cut is not None and run.stopped is None:
                run.stopped = "stop"
                self.engine.cancel(output.request_id)
            elif output.request_id in self.cancelled and run.stopped is None:
                run.stopped = "cancelled"
                self.engine.cancel(output.request_id)
            elif time.perf_counter() - run.started > self.runner.settings.max_generation_s:
                run.stopped = "length"  # the same bound the batch engine's max_time sets
                self.engine.cancel(output.request_id)
            text = text if cut is None else text[:cut]
            holdback = max((len(s) for s in run.request.stop), default=1) - 1
            ready = text if output.is_finished() or run.stopped else text[: len(text) - holdback]
            if not ready.endswith("\ufffd") and len(ready) > len(run.text):
                deltas[output.request_id] = ready[len(run.text) :]
                run.text = ready
            if output.is_finished() or run.stopped:
                ended.append(self._ended(running.pop(output.request_id), output, tokens, text))
        if deltas:
            self.writer.stream(deltas)
        return ended

    def _share_time(self, running: dict[str, _Running]) -> None:
        now = time.perf_counter()
        for run in running.values():
            run.gpu_seconds += (now - self._last_tick) / len(running)
        self._last_tick = now

    def _ended(self, run: _Running, output, tokens: list[int], text: str) -> _Ended:
        seconds = time.perf_counter() - run.started
        if output.error:
            result = failure("engine_error", str(output.error), run.prompt_tokens)
        else:
            hit_eos = bool(tokens) and tokens[-1] in self.engine.eos_ids
            reason = run.stopped or ("stop" if hit_eos else "length")
            result = GenerationResult(text, reason, run.prompt_tokens, len(tokens))
        result.batch_size = run.joined_with
        metrics.INFERENCE_SECONDS.labels(self.spec.name).observe(seconds)
        gpu_cost = gpu_seconds_cost_usd(run.gpu_seconds, self.spec.gpu_hour_usd)
        return _Ended(run.job, result, seconds, gpu_cost)

    def _finish(self, ended: list[_Ended], waiting) -> None:
        outcomes = [self.writer.outcome(e.job, e.result, e.seconds, e.gpu_cost_usd) for e in ended]
        for e in ended:
            metrics.BATCH_SIZE.labels(self.spec.name).observe(e.result.batch_size)
        claimed = [e.job for e in ended]
        try:
            finished = self.writer.write(claimed, outcomes)
        except Exception as exc:
            log.exception("could not write %d ended jobs", len(ended))
            self.writer.release(claimed)
            finished, error = {}, exc
        else:
            error = None
        for job in claimed:
            for item in waiting.pop(str(job.id), []):
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(finished.get(str(job.id), "skipped"))
