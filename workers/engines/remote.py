"""`openai`: forward each job to an OpenAI-compatible server (vLLM, TGI, llama.cpp's server,
a hosted API, another llmq) instead of running a model here.

Each job in a batch is one streamed upstream request, `/chat/completions` when the job has
messages and `/completions` otherwise, at most `max_concurrency` in flight per worker. Text
reaches the job's stream as it arrives; token counts come from the upstream's `usage` (asked
for with `stream_options.include_usage`), and the job is priced from the catalog as any other.

A failure before any text arrived (connection refused, 429, 5xx, a timeout) is tried again
after a back-off that honours `Retry-After` (tenacity). Each try starts from nothing: the
result, text and tokens are those of the try that answered, never a sum, so the finish path
writes one ledger row for one answer. Once text has reached the job's stream a broken
upstream ends the job instead, so a stream never shows text the result does not hold. A job
that fails records its code, how many tries it took and why the last one failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from llmq import metrics
from llmq.catalog import ModelSpec
from llmq.errors import CatalogError
from workers import upstream
from workers.engines.base import (
    NO_CONTROL,
    BatchControl,
    GenerationRequest,
    GenerationResult,
)
from workers.upstream import UpstreamFailure

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1  # how often a job's cancellation is checked while its upstream is silent
JITTER_S = 0.25


@dataclass
class _Progress:
    """What the current try of one job has received; a new try starts it afresh."""

    text: str = ""
    chunks: int = 0  # chunks that carried text: the token count when upstream sends no usage
    attempts: int = 0
    first_token_at: float | None = None


class RemoteEngine:
    name = "openai"
    device = "remote"
    groups_by_sampling = False  # every job is its own request: one batch, whatever its settings

    def __init__(self, spec: ModelSpec):
        self.spec, self.remote = spec, spec.remote
        api_key = "unused"  # servers without auth (a local vLLM) accept any key
        if self.remote.api_key_env:
            api_key = os.environ.get(self.remote.api_key_env, "")
            if not api_key:
                raise CatalogError(
                    f"model {spec.name!r}: environment variable {self.remote.api_key_env} "
                    "(its api_key_env) is not set"
                )
        self.client = openai.AsyncOpenAI(
            base_url=self.remote.base_url,
            api_key=api_key,
            max_retries=0,  # tries are ours: counted per job, and never after text was sent
            timeout=self.remote.request_timeout_s,
        )
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(self.remote.max_concurrency)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llmq-upstream", daemon=True
        )
        self._thread.start()
        log.info("forwarding %s to %s as %r (%d in flight at most)", spec.name,
                 self.remote.base_url, self.remote.upstream_model,
                 self.remote.max_concurrency)  # fmt: skip

    def generate(
        self, requests: list[GenerationRequest], control: BatchControl = NO_CONTROL
    ) -> list[GenerationResult]:
        """Run every request at once on the engine's event loop; one result each."""
        batch = asyncio.run_coroutine_threadsafe(self._batch(requests, control), self._loop)
        return batch.result()

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.client.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _batch(
        self, requests: list[GenerationRequest], control: BatchControl
    ) -> list[GenerationResult]:
        started = time.perf_counter()
        results = await asyncio.gather(*(self._job(r, control, started) for r in requests))
        for result in results:
            result.batch_size = len(requests)
        return list(results)

    async def _job(
        self, req: GenerationRequest, control: BatchControl, started: float
    ) -> GenerationResult:
        """One job: its tries, watched for cancellation and the worker's deadline."""
        progress = _Progress()
        task = asyncio.ensure_future(self._tries(req, control, progress))
        while not task.done():
            await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if not task.done() and control.is_cancelled(req.job_id):
                task.cancel()  # closes the upstream stream
                with_cancel = await asyncio.gather(task, return_exceptions=True)
                if not isinstance(with_cancel[0], asyncio.CancelledError):
                    break  # it finished on its own meanwhile
                return GenerationResult(progress.text, "cancelled", 0, progress.chunks)
            if not task.done() and control.deadline and time.monotonic() > control.deadline:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return self._failed(
                    UpstreamFailure("upstream_timeout", "no answer within the job's time", False),
                    progress,
                )
        try:
            result = task.result()
        except UpstreamFailure as exc:
            return self._failed(exc, progress)
        if progress.first_token_at is not None:
            result.first_token_s = progress.first_token_at - started
        return result

    def _failed(self, exc: UpstreamFailure, progress: _Progress) -> GenerationResult:
        return GenerationResult(
            None,
            None,
            error={"code": exc.code, "message": exc.message, "attempts": str(progress.attempts)},
        )

    async def _tries(
        self, req: GenerationRequest, control: BatchControl, progress: _Progress
    ) -> GenerationResult:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.remote.max_attempts),
            wait=_wait,
            retry=retry_if_exception(
                lambda exc: isinstance(exc, UpstreamFailure) and exc.retryable
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                progress.attempts += 1
                progress.text, progress.chunks = "", 0
                return await self._try(req, control, progress)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _try(
        self, req: GenerationRequest, control: BatchControl, progress: _Progress
    ) -> GenerationResult:
        """One upstream request, streamed; the job's result, or an `UpstreamFailure`."""
        usage: Any = None
        reason: str | None = None
        async with self._slots:
            try:
                async with asyncio.timeout(self.remote.request_timeout_s):
                    async with await self._open(req) as stream:
                        async for chunk in stream:
                            usage = getattr(chunk, "usage", None) or usage
                            for choice in chunk.choices:
                                reason = choice.finish_reason or reason
                                self._received(req, control, progress, _delta(choice))
                        if reason is None and usage is None:
                            raise httpx.RemoteProtocolError("the stream ended before its answer")
            except openai.APIStatusError as exc:
                detail = _detail(exc)
                failure = upstream.for_status(exc.status_code, detail, exc.response.headers)
                raise self._counted(failure, progress) from None
            except (TimeoutError, openai.APITimeoutError, httpx.TimeoutException):
                failure = UpstreamFailure("upstream_timeout", self._timeout_message(), True)
                raise self._counted(failure, progress) from None
            # Connection refused or reset; a stream that breaks mid-way raises httpx's own.
            except (openai.APIError, httpx.HTTPError) as exc:
                failure = UpstreamFailure("upstream_error", f"{type(exc).__name__}: {exc}", True)
                raise self._counted(failure, progress) from None
        metrics.UPSTREAM_REQUESTS.labels(self.spec.name, "ok").inc()
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if usage is None:
            log.warning("%s: upstream sent no usage; counting chunks as tokens", self.spec.name)
        return GenerationResult(
            progress.text,
            upstream.finish_reason(reason),
            int(prompt_tokens or 0),
            int(completion_tokens if completion_tokens is not None else progress.chunks),
        )

    def _received(
        self, req: GenerationRequest, control: BatchControl, progress: _Progress, text: str
    ) -> None:
        if not text:
            return
        if progress.first_token_at is None:
            progress.first_token_at = time.perf_counter()
        progress.text += text
        progress.chunks += 1
        if control.on_text is not None:
            control.on_text({req.job_id: text})

    def _counted(self, failure: UpstreamFailure, progress: _Progress) -> UpstreamFailure:
        """The failure as it is retried or not: never once text has reached the stream."""
        metrics.UPSTREAM_REQUESTS.labels(self.spec.name, failure.code).inc()
        if progress.text:
            failure.retryable = False
            failure.message += " (after text was streamed; not retried)"
        log.warning("%s: upstream try %d failed: %s", self.spec.name, progress.attempts, failure)
        return failure

    def _timeout_message(self) -> str:
        return f"no complete answer within request_timeout_s={self.remote.request_timeout_s:g}"

    async def _open(self, req: GenerationRequest) -> Any:
        common: dict[str, Any] = {
            "model": self.remote.upstream_model,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.stop:
            common["stop"] = req.stop
        if req.seed is not None:
            common["seed"] = req.seed
        if req.messages is not None:
            return await self.client.chat.completions.create(messages=req.messages, **common)
        return await self.client.completions.create(prompt=req.prompt or "", **common)


def _delta(choice: Any) -> str:
    """The text one streamed choice carries: `delta.content` (chat) or `text` (completions)."""
    delta = getattr(choice, "delta", None)
    if delta is not None:
        return getattr(delta, "content", None) or ""
    return getattr(choice, "text", None) or ""


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


def _wait(state: Any) -> float:
    failure = state.outcome.exception()
    assert isinstance(failure, UpstreamFailure)
    return upstream.backoff_s(failure, state.attempt_number, random.uniform(0, JITTER_S))
