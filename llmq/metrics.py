"""Every Prometheus metric, defined once. Labels stay small: model, status, route, reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from llmq.jobs import Outcome

# API
HTTP_REQUESTS = Counter(
    "llmq_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "llmq_http_request_duration_seconds", "HTTP request latency", ["route", "method"]
)
JOBS_SUBMITTED = Counter("llmq_jobs_submitted_total", "Jobs accepted by the API", ["model"])
REJECTIONS = Counter("llmq_rejections_total", "Requests refused", ["reason"])

# Workers
BATCH_SIZE = Histogram(
    "llmq_batch_size",
    "Jobs per generate call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PROMPT_TOKENS = Counter("llmq_prompt_tokens_total", "Prompt tokens processed", ["model"])
COMPLETION_TOKENS = Counter("llmq_completion_tokens_total", "Tokens generated", ["model"])
JOBS_FINISHED = Counter("llmq_jobs_finished_total", "Jobs finished by workers", ["model", "status"])
INFERENCE_SECONDS = Histogram(
    "llmq_inference_seconds", "Wall time of one batched generation", ["model"]
)
ENGINE_ERRORS = Counter("llmq_engine_errors_total", "Engine failures on a batch", ["model"])
COST_USD = Counter("llmq_cost_usd_total", "Token-price cost of finished jobs", ["model"])


def record_outcome(model: str, out: Outcome) -> None:
    PROMPT_TOKENS.labels(model).inc(out.prompt_tokens)
    COMPLETION_TOKENS.labels(model).inc(out.completion_tokens)
    JOBS_FINISHED.labels(model, "succeeded" if out.succeeded else "failed").inc()
    COST_USD.labels(model).inc(float(out.cost_usd))


# Tenancy
RATE_LIMIT_ERRORS = Counter(
    "llmq_rate_limit_errors_total", "Rate-limit checks that could not reach Redis"
)
WEBHOOK_ATTEMPTS = Counter(
    "llmq_webhook_attempts_total", "Webhook delivery attempts by outcome", ["outcome"]
)
