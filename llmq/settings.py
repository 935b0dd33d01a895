"""Typed settings. Every variable is `LLMQ_<FIELD>` in the environment (or a `.env` file).

The field list below is the one documented list of settings; `docs/settings.md` and
`.env.example` are rendered from it. The module is longer than the ~300 lines a module aims
at, on purpose: it holds that one list, and splitting the list by process would scatter what
an operator reads in one place. Its fields repeat one shape (name, default, description):
declarations, not logic.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/llmq",
        description="SQLAlchemy URL of the Postgres database (psycopg 3 driver).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for queues, pub/sub and heartbeats."
    )
    redis_prefix: str = Field(
        "llmq:",
        description="Prefix of every Redis key and channel llmq uses (queues included), "
        "so several deployments or test runs can share one Redis.",
    )
    catalog_path: Path = Field(Path("models.toml"), description="The model catalog file.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "llmq",
        description="Where loaded models are cached as safetensors for fast restarts.",
    )
    api_url: str = Field("http://127.0.0.1:8000", description="Where the CLI finds the API.")
    api_key: str | None = Field(None, description="API key the CLI sends.")
    visibility_timeout_s: int = Field(
        3600,
        description="Seconds before Redis hands an unacknowledged message to another worker. "
        "Must exceed the longest batch wait plus generation.",
    )
    max_generation_s: float = Field(
        600.0, description="Hard bound on one batched generation (transformers max_time)."
    )
    long_poll_max_s: int = Field(60, description="Largest `?wait=` a client may ask for.")
    max_open_waits_per_key: int = Field(
        32,
        ge=1,
        description="Long-polls (`?wait=`) and event streams one API key may hold open at "
        "once, counted across every API replica; one more is refused with 429.",
    )
    openai_wait_limit_s: float = Field(
        540.0,
        gt=0,
        description="How long `/v1/chat/completions` and `/v1/completions` wait for their "
        "jobs before answering 408 (which names the jobs; they keep running). Below the "
        "`openai` client's own 600 s timeout, so the client hears this answer instead of "
        "timing out and sending the request again.",
    )
    max_prompt_chars: int = Field(
        200_000, description="Largest prompt (or sum of message contents) accepted, in characters."
    )
    max_request_bytes: int = Field(1_048_576, description="Largest request body accepted.")
    max_bulk_request_bytes: int = Field(
        64 * 1_048_576, description="Largest body accepted by POST /v1/jobs/bulk."
    )
    max_file_bytes: int = Field(
        200 * 1_048_576,
        ge=1,
        description="Largest file `POST /v1/files` accepts (200 MiB); counted as the bytes "
        "arrive, so a larger upload is refused with 413 without being stored.",
    )
    max_batch_lines: int = Field(
        50_000, ge=1, description="Most requests (lines) one batch's input file may hold."
    )
    max_batch_line_bytes: int = Field(
        8 * 1_048_576,
        ge=1,
        description="Longest line of a batch's input file; a longer one fails the batch.",
    )
    batch_completion_window_s: int = Field(
        86_400, gt=0, description="How long a batch may run (OpenAI's `24h`) before it expires."
    )
    files_url: str = Field(
        "postgres",
        pattern=r"^(postgres|s3://[^/]+(/.*)?)$",
        description="Where file contents live: `postgres` (1 MiB chunks in "
        "LLMQ_DATABASE_URL, for every API replica and worker) or `s3://bucket/prefix` "
        "(any S3-compatible store; credentials and region from the standard AWS "
        "environment, needs `pip install llmq[s3]`). File metadata stays in Postgres.",
    )
    files_s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of the S3-compatible store (MinIO, Ceph, R2...); unset: "
        "AWS's own, or `AWS_ENDPOINT_URL_S3` when set.",
    )
    max_header_bytes: int = Field(
        32_768, description="Largest header section accepted (names and values), in bytes."
    )
    max_header_count: int = Field(100, description="Most header fields one request may carry.")
    redis_max_connections: int = Field(
        1000, description="Redis connections one API process may hold (long-polls hold one each)."
    )
    worker_heartbeat_s: float = Field(
        5.0,
        description="How often a worker refreshes its heartbeat in Redis and renews the "
        "leases of the jobs it runs in Postgres.",
    )
    job_lease_s: float = Field(
        30.0,
        description="How long a claim holds a running job without renewal; a live worker "
        "renews it every heartbeat, and the sweeper puts back jobs whose lease ran out. "
        "At least 2 x LLMQ_WORKER_HEARTBEAT_S.",
    )
    flower_url: str | None = Field(None, description="Public URL of Flower, linked from jobs.")
    flower_port: int = Field(5555, description="Port `llmq dev` runs Flower on.")
    flower_basic_auth: str | None = Field(
        None, description="`user:password` for Flower; `llmq dev` generates one when unset."
    )
    flower_max_tasks: int = Field(
        10_000,
        description="Tasks Flower keeps in memory; its memory grows with this (Flower's "
        "own default, 100000, is too many for a busy queue).",
    )
    flower_purge_offline_workers_s: int = Field(
        300, description="Flower forgets a worker this many seconds after it went offline."
    )
    auth_cache_ttl_s: float = Field(
        60.0,
        ge=0,
        description="How long an API process may answer for a key without reading Postgres. "
        "A revoked key is refused at once all the same: revoking tells every API process "
        "through Redis, and while that subscription is down the cache is not used. 0 turns "
        "it off.",
    )
    api_workers: int = Field(
        0,
        ge=0,
        description="API worker processes `llmq api` (and `llmq dev`) starts behind one port; "
        "0: one per CPU core this process may use. In a container with a CPU limit, set it to "
        "that limit.",
    )
    api_metrics_port: int = Field(
        9101,
        description="Internal port of the API's Prometheus `/metrics` and `/metrics/targets`, "
        "apart from the public port; 0 turns it off. With several API processes the first to "
        "bind it serves the counters of all of them (Prometheus multiprocess mode).",
    )
    api_metrics_host: str = Field(
        "0.0.0.0",
        description="Address the API's metrics port listens on (`llmq dev`: 127.0.0.1).",
    )
    worker_metrics_port: int = Field(
        9200,
        description="First port a worker tries for its Prometheus `/metrics`; each worker on "
        "a machine takes the next free one and advertises it in its heartbeat. 0 turns it off.",
    )
    metrics_advertise_host: str | None = Field(
        None,
        description="Host name Prometheus uses to reach this machine's worker metrics "
        "(found through the API's `/metrics/targets`); default: the machine's host name.",
    )
    default_expires_in_s: int = Field(
        86_400,
        description="Deadline of a job that names no `expires_in_s`: still queued after this "
        "many seconds, it is expired instead of run.",
    )
    max_expires_in_s: int = Field(
        2_592_000, description="Largest `expires_in_s` a submit may ask for (30 days)."
    )
    max_attempts: int = Field(
        3,
        description="Claims a job may use up; a job whose worker died this many times is "
        "failed instead of put back (a poison job does not loop forever).",
    )
    scheduler_backend: Literal["local", "kubernetes"] = Field(
        "local",
        description="How the scheduler resizes pools: `local` worker processes on this "
        "machine, or the scale of one Kubernetes Deployment per model.",
    )
    scheduler_interval_s: float = Field(
        1.0, description="How often the scheduler observes the queues and decides."
    )
    scale_down_stabilization_s: float = Field(
        300.0,
        description="A pool shrinks only to the largest size recommended over this window "
        "(Kubernetes HPA's downscale stabilization).",
    )
    scale_to_zero_idle_s: float = Field(
        300.0,
        description="A pool with min_replicas 0 goes to zero only after it has had no "
        "waiting or running job for this long (KEDA's cooldown).",
    )
    max_scale_step: int = Field(
        4, ge=1, description="Most replicas one pool may gain or lose in one decision."
    )
    throughput_window_s: float = Field(
        900.0,
        gt=0,
        description="Jobs finished within this window measure a pool's tokens/s per replica, "
        "which sizes pools for their deadlines (none until a job has finished).",
    )
    gpu_count: int | None = Field(
        None,
        description="GPUs the local backend may hand out (one per GPU worker); unset: "
        "counted with `nvidia-smi -L` (0 when it is missing).",
    )
    warm_template: bool = Field(
        True,
        description="The local backend keeps a warm template process (torch, transformers "
        "and Celery imported, no model) and forks each new worker from it, so a worker "
        "skips the interpreter start and the imports; false: every worker starts afresh.",
    )
    drain_timeout_s: float = Field(
        660.0,
        description="How long a worker leaving its pool may take to finish what it holds "
        "before it is killed and its jobs are put back.",
    )
    queue_depth_per_worker: float = Field(
        2.0,
        gt=0,
        description="How deep the scheduler's feeder fills a model's Redis queue from the "
        "backlog in Postgres: this many batches (`max_batch_size`) per live worker, and at "
        "least one batch. Interactive submits skip the backlog while the model's interactive "
        "queue is shorter than that.",
    )
    feeder_interval_s: float = Field(
        0.25,
        gt=0,
        description="How often the scheduler leader refills each model's queue from the "
        "backlog, between its scaling steps (it refills in each step too).",
    )
    backlog_deadline_bucket_s: float = Field(
        3600.0,
        ge=0,
        description="The feeder compares backlog jobs' deadlines (`expires_at`) in windows "
        "this long: within one window, fair share across keys decides. 0: exact deadlines.",
    )
    sweeper_interval_s: float = Field(
        5.0, description="How often the leader sweeps for lost, orphaned and expired jobs."
    )
    republish_after_s: float = Field(
        30.0,
        description="A queued job whose message has not been seen this long after it was "
        "last published is published again.",
    )
    held_message_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A message a worker took this long ago and has not acknowledged no "
        "longer counts as the job's (or webhook delivery's) message: a queued job or pending "
        "delivery it carries is published again. A live worker claims within one batch; a "
        "dead one's messages would otherwise wait for LLMQ_VISIBILITY_TIMEOUT_S. A second "
        "message is harmless: only one claim wins.",
    )
    sweeper_scan_limit: int = Field(
        10_000,
        description="Longest queue the sweeper reads to find queued jobs that have no "
        "message; longer queues are checked once they are shorter.",
    )
    retention_days: float = Field(
        0.0,
        ge=0,
        description="Finished jobs' prompts, messages and outputs are cleared this many days "
        "after they finished (`llmq prune`, and the scheduler leader's sweeper as it goes); "
        "ids, status, tokens and the usage ledger are kept. 0: kept forever.",
    )
    scheduler_metrics_port: int = Field(
        9102, description="Port of the scheduler's Prometheus endpoint; 0 turns it off."
    )
    k8s_namespace: str = Field("llmq", description="Namespace of the worker Deployments.")
    k8s_deployment_prefix: str = Field(
        "llmq-worker-", description="A model's worker Deployment is this prefix + its name."
    )
    log_level: str = Field("INFO", description="Log level of every process.")
    secret_key: str | None = Field(
        None,
        description="Fernet key (urlsafe base64 of 32 bytes) that encrypts webhook signing "
        "secrets at rest; one for every process. `llmq api`, `worker`, `webhook-worker` and "
        "`scheduler` refuse to start without it; `llmq dev` and `llmq demo` use the key in "
        "`secret_key_file` when it is unset.",
    )
    secret_key_file: Path = Field(
        Path(".llmq/secret.key"),
        description="Where a local key lives when `LLMQ_SECRET_KEY` is unset (`llmq dev`, "
        "`llmq demo`, and CLI commands run by hand next to them); made on first use.",
    )
    rate_limit_redis_url: str | None = Field(
        None, description="Redis holding the rate-limit counters; default `LLMQ_REDIS_URL`."
    )
    rate_limit_fail_open: bool = Field(
        True,
        description="When the rate-limit Redis is unreachable: admit requests (true, counted "
        "in `llmq_rate_limit_errors_total`) or refuse them with 503 (false). Budgets and "
        "concurrency limits live in Postgres and hold either way.",
    )
    idempotency_retention_h: int = Field(
        24, description="Hours an `Idempotency-Key` is remembered per API key."
    )
    webhook_timeout_s: float = Field(
        15.0,
        description="Wall-clock deadline of one webhook attempt, from connect to the last byte "
        "read; past it the attempt is a `timeout` failure, retried on the schedule.",
    )
    webhook_max_response_bytes: int = Field(
        65_536, description="Most bytes of a webhook response read before the connection is cut."
    )
    webhook_retry_delays_s: str = Field(
        "5,300,1800,7200,18000,36000,50400,72000,86400",
        description="Seconds before each retry of a failed webhook (comma-separated); "
        "the number of entries is the number of retries.",
    )
    webhook_jitter: float = Field(
        0.1, description="Random spread of each retry delay, as a fraction (0.1 = ±10%)."
    )
    webhook_allowed_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR) webhooks may reach although they are "
        "not public, e.g. `127.0.0.0/8` for local development. Any port is allowed there.",
    )
    webhook_allowed_ports: str = Field(
        "80,443,8080,8443", description="Ports a webhook URL on a public address may use."
    )
    webhook_resolve_deadline_s: float = Field(
        5.0,
        gt=0,
        description="Most time one submit (or bulk submit) spends resolving the hostnames of "
        "its webhook URLs; a name not resolved by then is a 422 on the item's `webhook_url`.",
    )
    webhook_resolve_concurrency: int = Field(
        16,
        ge=1,
        description="Distinct webhook hostnames of one submit resolved at the same time "
        "(each is resolved once per request).",
    )
    webhook_sweep_s: float = Field(
        5.0, description="How often the webhook worker looks for due or lost deliveries."
    )
    webhook_redeliver_per_min: int = Field(
        10,
        ge=1,
        description="Manual webhook redeliveries one API key may ask for per minute (a burst "
        "of this many, then the steady rate); over it the API answers 429 with `Retry-After`.",
    )
    semantic_cache_ttl_s: int = Field(
        86_400,
        ge=1,
        description="How long a semantic cache entry (a prompt's embedding and what answers "
        "it) lives in Redis, counted from when it was added.",
    )
    semantic_cache_max_entries: int = Field(
        100_000,
        ge=1,
        description="Most semantic cache entries kept per scope and model revision; adding "
        "one more drops the oldest. Each API replica holds them in memory (~1.6 KB each).",
    )

    cache_ttl_s: int = Field(
        3600,
        ge=0,
        description="How long a determined job's answer is kept in the exact cache (0: no cache).",
    )
    cache_max_entry_bytes: int = Field(
        262_144, ge=1, description="Largest answer the exact cache stores (bytes of its entry)."
    )
    cache_max_bytes: int = Field(
        268_435_456,
        ge=0,
        description="Bytes all exact-cache entries may hold together; past it the oldest go.",
    )
    cache_shared_across_keys: bool = Field(
        False,
        description="Let every API key hit the exact cache entries of every other key "
        "(default: each key sees only answers to its own jobs).",
    )

    @model_validator(mode="after")
    def _timeouts_fit(self) -> Settings:
        # A message waits behind at most one batch, then runs in the next; Redis must not
        # hand it to another worker meanwhile.
        needed = 2 * self.max_generation_s + 120
        if self.visibility_timeout_s < needed:
            raise ValueError(
                f"LLMQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must be at least "
                f"2 x LLMQ_MAX_GENERATION_S + 120 = {needed:.0f}"
            )
        # One late or failed renewal must not cost a live worker its jobs.
        if self.job_lease_s < 2 * self.worker_heartbeat_s:
            raise ValueError(
                f"LLMQ_JOB_LEASE_S ({self.job_lease_s}) must be at least "
                f"2 x LLMQ_WORKER_HEARTBEAT_S = {2 * self.worker_heartbeat_s:g}"
            )
        return self


def settings_table() -> str:
    """The documented list of variables, as the Markdown table in docs/settings.md."""
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = _shown_default(field.default)
        rows.append(f"| `LLMQ_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows) + "\n"


# Settings docker compose refuses to start without: they are written out, empty, for the user.
COMPOSE_REQUIRED = ("flower_basic_auth", "secret_key")


def env_example() -> str:
    """The LLMQ_* part of `.env.example`: every setting, its default commented out."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = _shown_default(field.default)
        lines.append(f"# {field.description}")
        if name in COMPOSE_REQUIRED:
            lines.append(f"LLMQ_{name.upper()}=")
        else:
            lines.append(f"# LLMQ_{name.upper()}={default}")
    return "\n".join(lines) + "\n"


def _shown_default(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, Path) and str(default).startswith(str(Path.home())):
        return "~/" + str(default.relative_to(Path.home()))
    return str(default)


@lru_cache
def get_settings() -> Settings:
    return Settings()
