"""Every Prometheus metric, defined once. Labels stay small: model, status, route, reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

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


# Scheduler
DESIRED_REPLICAS = Gauge("llmq_pool_desired_replicas", "Replicas the scheduler wants", ["model"])
ACTUAL_REPLICAS = Gauge("llmq_pool_actual_replicas", "Replicas the backend runs", ["model"])
POOL_WAITING = Gauge("llmq_pool_waiting", "Messages waiting in the model's queue", ["model"])
POOL_IN_FLIGHT = Gauge("llmq_pool_in_flight", "Jobs running on the model's pool", ["model"])
SCALING_EVENTS = Counter(
    "llmq_scaling_events_total", "Pool size changes the scheduler made", ["model", "reason"]
)
SWEEPER_ACTIONS = Counter(
    "llmq_sweeper_actions_total",
    "Jobs the sweeper moved: requeued, failed, expired, republished",
    ["action"],
)
IS_LEADER = Gauge("llmq_scheduler_is_leader", "1 while this scheduler holds the leader lock")
