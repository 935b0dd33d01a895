"""Every Prometheus metric, defined once. Labels stay small: model, status, route, reason.

Never a job id or a key in a label: each label value is a new time series. Names carry
their base unit (`_seconds`, `_bytes`, `_usd`). Counters of money are floats here because
Prometheus only has floats; the ledger in Postgres (NUMERIC) is the record of what was spent.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from llmq.jobs import Outcome

log = logging.getLogger(__name__)

# Latencies from milliseconds (the echo engine, a warm batch) to minutes (a long generation).
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip

# API
HTTP_REQUESTS = Counter(
    "llmq_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "llmq_http_request_duration_seconds", "HTTP request latency", ["route", "method"]
)
JOBS_SUBMITTED = Counter("llmq_jobs_submitted_total", "Jobs accepted by the API", ["model"])
CACHE_HITS = Counter(
    "llmq_cache_hits_total", "Determined jobs the exact cache answered at submit", ["model"]
)
CACHE_MISSES = Counter(
    "llmq_cache_misses_total",
    "Determined jobs the exact cache had no answer for (they run, and their answer is kept)",
    ["model"],
)
REJECTIONS = Counter(
    "llmq_rejections_total",
    "Requests refused, by reason: validation, auth, too_large, queue_unavailable, "
    "unavailable (Postgres or Redis did not answer), rate_limit, budget",
    ["reason"],
)

# Queues: gauges computed at scrape time by the API (llmq/queue_metrics.py); the histogram
# is observed by workers when they claim a job.
QUEUE_WAITING = "llmq_queue_waiting_jobs"
QUEUE_BACKLOG = "llmq_queue_backlog_jobs"
QUEUE_IN_FLIGHT = "llmq_queue_in_flight_jobs"
QUEUE_OLDEST_AGE = "llmq_queue_oldest_waiting_age_seconds"
WORKERS_LIVE = "llmq_workers_live"
CACHE_BYTES = "llmq_cache_bytes"
QUEUE_WAIT = Histogram(
    "llmq_queue_wait_seconds",
    "Time from submit to the claim that started the job",
    ["model"],
    buckets=SECONDS_BUCKETS,
)

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
    "llmq_inference_seconds",
    "Wall time of one batched generation",
    ["model"],
    buckets=SECONDS_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmq_time_to_first_token_seconds",
    "Time from submit to the job's first generated token (queue, batching and prefill)",
    ["model"],
    buckets=SECONDS_BUCKETS,
)
ENGINE_ERRORS = Counter("llmq_engine_errors_total", "Engine failures on a batch", ["model"])
UPSTREAM_REQUESTS = Counter(
    "llmq_upstream_requests_total",
    "Requests a remote (`openai`) worker sent upstream, by result: ok, upstream_timeout, "
    "upstream_rate_limited, upstream_error, upstream_rejected",
    ["model", "status"],
)
DEVICE_MEMORY = "llmq_device_memory_used_bytes"
DEVICE_MEMORY_TOTAL = "llmq_device_memory_total_bytes"
GPU_UTILIZATION = "llmq_gpu_utilization_ratio"

# Router: breaker states are collected from Redis by the API (llmq/queue_metrics.py); the
# counters by whichever process made the move (a worker, or the API at submit).
CIRCUIT_STATE = "llmq_circuit_state"
CIRCUIT_OPENED = Counter(
    "llmq_circuit_opened_total", "Times a model's circuit breaker opened", ["model"]
)
FALLBACKS = Counter(
    "llmq_fallbacks_total",
    "Jobs moved to a fallback model, by reason (a failure's code, circuit_open, queue_age)",
    ["model", "to", "reason"],
)

# Scheduler (recorded by the scheduler process)
SCALING_EVENTS = Counter(
    "llmq_scaling_events_total", "Pool resizes by direction (up, down)", ["model", "direction"]
)
SWEEPER_ACTIONS = Counter(
    "llmq_sweeper_actions_total",
    "Jobs the sweeper acted on, by action (republished, requeued, expired, failed, fell_back, "
    "pruned)",
    ["action"],
)

# Money
COST_USD = Counter("llmq_cost_usd_total", "Token-price cost of finished jobs", ["model"])
GPU_COST_USD = Counter(
    "llmq_gpu_cost_usd_total",
    "GPU-hour cost of finished jobs (their share of device time)",
    ["model"],
)

# Metric names served by collectors (queue gauges in the API, device gauges in workers), with their help, for docs and dashboards.
COLLECTED = {
    QUEUE_WAITING: "Messages waiting in the model's Redis queue, every priority and lane",
    QUEUE_BACKLOG: "Queued jobs held in Postgres with no message yet (from Postgres)",
    QUEUE_IN_FLIGHT: "Jobs running now (from Postgres)",
    QUEUE_OLDEST_AGE: "Age of the oldest queued job; 0 when none waits (from Postgres)",
    WORKERS_LIVE: "Workers with a live heartbeat",
    CACHE_BYTES: "Bytes the exact cache's entries hold in Redis (from Redis)",
    CIRCUIT_STATE: "The model's circuit breaker: 0 closed, 1 open, 2 half-open (from Redis)",
    DEVICE_MEMORY: "Memory the worker holds on its device: CUDA reserved, or resident on CPU",
    DEVICE_MEMORY_TOTAL: "Memory of the worker's device (CUDA only)",
    GPU_UTILIZATION: "GPU busy fraction over the last sample period (NVML, when present)",
}


def record_outcome(model: str, out: Outcome) -> None:
    PROMPT_TOKENS.labels(model).inc(out.prompt_tokens)
    COMPLETION_TOKENS.labels(model).inc(out.completion_tokens)
    JOBS_FINISHED.labels(model, out.status).inc()
    COST_USD.labels(model).inc(float(out.cost_usd))
    GPU_COST_USD.labels(model).inc(float(out.gpu_cost_usd))


API_SERIES = {
    "llmq_rate_limit_errors",
    "llmq_http_requests",
    "llmq_http_request_duration_seconds",
    "llmq_jobs_submitted",
    "llmq_rejections",
    "llmq_cache_hits",
    "llmq_cache_misses",
    CACHE_BYTES,
    QUEUE_WAITING,
    QUEUE_BACKLOG,
    QUEUE_IN_FLIGHT,
    QUEUE_OLDEST_AGE,
    WORKERS_LIVE,
    CIRCUIT_STATE,
}
SCHEDULER_SERIES = {
    "llmq_pool_desired_replicas",
    "llmq_pool_actual_replicas",
    "llmq_pool_waiting",
    "llmq_pool_in_flight",
    "llmq_pool_backlog",
    "llmq_backlog_fed",
    "llmq_scheduler_is_leader",
    "llmq_scaling_events",
    "llmq_sweeper_actions",
}


def served_by(name: str) -> str:
    """Which process's /metrics carries a metric (name without the `_total` suffix)."""
    if name in API_SERIES:
        return "api"
    if name == "llmq_webhook_attempts":
        return "webhook worker"
    if name in ("llmq_circuit_opened", "llmq_fallbacks"):
        return "worker, api"
    return "scheduler" if name in SCHEDULER_SERIES else "worker"


def metrics_table() -> str:
    """Every llmq metric as the Markdown table in docs/operations.md."""
    rows = ["| metric | type | labels | served by | what |", "| --- | --- | --- | --- | --- |"]
    for metric in REGISTRY.collect():
        if not metric.name.startswith("llmq_"):
            continue
        suffix = "_total" if metric.type == "counter" else ""
        labels = _labels(metric.name + suffix)
        rows.append(
            f"| `{metric.name}{suffix}` | {metric.type} | {labels} | {served_by(metric.name)} "
            f"| {metric.documentation} |"
        )
    gauges = {
        QUEUE_WAITING: "model",
        QUEUE_BACKLOG: "model",
        QUEUE_IN_FLIGHT: "model",
        QUEUE_OLDEST_AGE: "model",
        WORKERS_LIVE: "model",
        CACHE_BYTES: "-",
        CIRCUIT_STATE: "model",
        DEVICE_MEMORY: "model, device",
        DEVICE_MEMORY_TOTAL: "model, device",
        GPU_UTILIZATION: "model, device",
    }
    for name, help_text in COLLECTED.items():
        rows.append(f"| `{name}` | gauge | {gauges[name]} | {served_by(name)} | {help_text} |")
    return "\n".join(rows) + "\n"


def _labels(sample_name: str) -> str:
    collector = REGISTRY._names_to_collectors.get(sample_name)
    names = getattr(collector, "_labelnames", ())
    return ", ".join(names) or "-"


def serve_metrics(base_port: int, span: int = 100, addr: str = "0.0.0.0") -> int | None:
    """Serve the default registry on the first free port from `base_port`; returns it.

    Several workers on one machine each get their own port. Binding is the test of
    freeness, so two processes starting together cannot pick the same one. 0: no server.
    """
    if base_port <= 0:
        return None
    for port in range(base_port, base_port + span):
        try:
            start_http_server(port, addr=addr)
        except OSError:
            continue
        return port
    log.warning("no free metrics port in %d-%d; metrics are not served", base_port, port)
    return None


def advertised_host(configured: str | None) -> str:
    """The host name Prometheus should use to reach this process."""
    return configured or socket.gethostname()


# Tenancy
RATE_LIMIT_ERRORS = Counter(
    "llmq_rate_limit_errors_total", "Rate-limit checks that could not reach Redis"
)
WEBHOOK_ATTEMPTS = Counter(
    "llmq_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered, pending (a retry is due later), failed, "
    "stale (ended after a newer attempt of the delivery had started; changes nothing)",
    ["outcome"],
)


# Scheduler
DESIRED_REPLICAS = Gauge("llmq_pool_desired_replicas", "Replicas the scheduler wants", ["model"])
ACTUAL_REPLICAS = Gauge("llmq_pool_actual_replicas", "Replicas the backend runs", ["model"])
POOL_WAITING = Gauge("llmq_pool_waiting", "Messages waiting in the model's queue", ["model"])
POOL_IN_FLIGHT = Gauge("llmq_pool_in_flight", "Jobs running on the model's pool", ["model"])
SEMANTIC_CACHE_LOOKUPS = Counter(
    "llmq_semantic_cache_lookups_total",
    "Semantic cache lookups of jobs the exact cache missed, by result (hit, miss)",
    ["model", "result"],
)
POOL_DEADLINE_REPLICAS = Gauge(
    "llmq_pool_deadline_replicas", "Replicas the model's deadlines need", ["model"]
)
BATCHES_AT_RISK = Gauge(
    "llmq_batches_at_risk",
    "Batches that cannot meet their deadline even at the pool's max_replicas",
    ["model"],
)
POOL_BACKLOG = Gauge(
    "llmq_pool_backlog", "Queued jobs of the model held in Postgres with no message yet", ["model"]
)
BACKLOG_FED = Counter(
    "llmq_backlog_fed_total", "Jobs the feeder moved from the backlog to the queue", ["model"]
)
IS_LEADER = Gauge("llmq_scheduler_is_leader", "1 while this scheduler holds the leader lock")
