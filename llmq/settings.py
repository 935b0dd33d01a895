"""Typed settings. Every variable is `LLMQ_<FIELD>` in the environment (or a `.env` file).

The field list below is the one documented list of settings; `docs/settings.md` mirrors it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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
    max_prompt_chars: int = Field(
        200_000, description="Largest prompt (or sum of message contents) accepted, in characters."
    )
    max_request_bytes: int = Field(1_048_576, description="Largest request body accepted.")
    worker_heartbeat_s: float = Field(
        5.0, description="How often a worker refreshes its heartbeat."
    )
    flower_url: str | None = Field(None, description="Public URL of Flower, linked from jobs.")
    flower_port: int = Field(5555, description="Port `llmq dev` runs Flower on.")
    flower_basic_auth: str | None = Field(
        None, description="`user:password` for Flower; `llmq dev` generates one when unset."
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
    gpu_count: int | None = Field(
        None,
        description="GPUs the local backend may hand out (one per GPU worker); unset: "
        "counted with `nvidia-smi -L` (0 when it is missing).",
    )
    drain_timeout_s: float = Field(
        660.0,
        description="How long a worker leaving its pool may take to finish what it holds "
        "before it is killed and its jobs are put back.",
    )
    sweeper_interval_s: float = Field(
        5.0, description="How often the leader sweeps for lost, orphaned and expired jobs."
    )
    republish_after_s: float = Field(
        30.0,
        description="A queued job whose message has not been seen this long after it was "
        "last published is published again.",
    )
    sweeper_scan_limit: int = Field(
        10_000,
        description="Longest queue the sweeper reads to find queued jobs that have no "
        "message; longer queues are checked once they are shorter.",
    )
    scheduler_metrics_port: int = Field(
        9102, description="Port of the scheduler's Prometheus endpoint; 0 turns it off."
    )
    k8s_namespace: str = Field("llmq", description="Namespace of the worker Deployments.")
    k8s_deployment_prefix: str = Field(
        "llmq-worker-", description="A model's worker Deployment is this prefix + its name."
    )
    log_level: str = Field("INFO", description="Log level of every process.")


def settings_table() -> str:
    """The documented list of variables, as the Markdown table in docs/settings.md."""
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default is not None else ""
        if isinstance(default, Path) and str(default).startswith(str(Path.home())):
            default = "~/" + str(default.relative_to(Path.home()))
        rows.append(f"| `LLMQ_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows) + "\n"


@lru_cache
def get_settings() -> Settings:
    return Settings()
