"""`echo`: no model. Deterministic text after a fixed delay; measures llmq's own overhead."""

from __future__ import annotations

import time

from llmq.catalog import ModelSpec
from workers.batching import earliest_stop
from workers.engines.base import (
    NO_CONTROL,
    BatchControl,
    GenerationRequest,
    GenerationResult,
    failure,
)


class EchoEngine:
    name = "echo"
    device = "cpu"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def generate(
        self, requests: list[GenerationRequest], control: BatchControl = NO_CONTROL
    ) -> list[GenerationResult]:
        started = time.perf_counter()
        if self.spec.echo_delay_ms:
            time.sleep(self.spec.echo_delay_ms / 1000)
        results = [self._one(r, control.is_cancelled(r.job_id)) for r in requests]
        elapsed = time.perf_counter() - started  # the whole reply arrives at once
        for result in results:
            result.batch_size = len(requests)
            if result.completion_tokens:
                result.first_token_s = elapsed
        if control.on_text:
            control.on_text(
                {r.job_id: res.text for r, res in zip(requests, results, strict=True) if res.text}
            )
        return results

    def _one(self, req: GenerationRequest, cancelled: bool) -> GenerationResult:
        source = (
            req.prompt if req.prompt is not None else (req.messages or [{}])[-1].get("content", "")
        )
        words = str(source).split()
        if len(words) >= self.spec.context_length:
            return failure(
                "context_length_exceeded", "prompt is longer than the context", len(words)
            )
        reply = words[: req.max_tokens]
        text = " ".join(reply)
        reason = "length" if len(words) >= req.max_tokens else "stop"
        cut = earliest_stop(text, req.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if cancelled:
            reason = "cancelled"
        return GenerationResult(text, reason, len(words), len(reply))
