"""Typed settings. Every variable is `LLMQ_<FIELD>` in the environment (or a `.env` file).

The field list below is the one documented list of settings; `docs/settings.md` mirrors it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    log_level: str = Field("INFO", description="Log level of every process.")
    secret_key: str | None = Field(
        None,
        description="Fernet key (urlsafe base64 of 32 bytes) that encrypts webhook signing "
        "secrets at rest. When unset, a key is read from (or made in) `secret_key_file`.",
    )
    secret_key_file: Path = Field(
        Path(".llmq/secret.key"),
        description="Where a local key lives when `LLMQ_SECRET_KEY` is unset (dev stacks).",
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
    webhook_timeout_s: float = Field(15.0, description="Timeout of one webhook delivery.")
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
    webhook_sweep_s: float = Field(
        5.0, description="How often the webhook worker looks for due or lost deliveries."
    )


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
