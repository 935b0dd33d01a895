"""A whole llmq stack on private Redis and Postgres, with a supervisor and fault handles.

Processes: the API (uvicorn), two schedulers of the same pools (one leads, one stands by;
the leader's local backend starts and restarts the workers) and the webhook sender. The
supervisor plays the operator's process manager: whatever of those died is started again,
and a killed scheduler is replaced so one always stands by.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from cryptography.fernet import Fernet

from cli.devstack import free_port
from llmq import events
from llmq.db import ensure_database, migrate
from llmq.processes import send_signal, stop_process
from reliability.services import PrivatePostgres, PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "chaos:"
DATABASE = "llmq_chaos"

# Short intervals so a fault is noticed in seconds; the invariants do not depend on them.
ENV = {
    "LLMQ_REDIS_PREFIX": PREFIX,
    "LLMQ_WORKER_HEARTBEAT_S": "1",
    "LLMQ_WORKER_METRICS_PORT": "0",
    "LLMQ_API_METRICS_PORT": "0",
    "LLMQ_SCHEDULER_METRICS_PORT": "0",
    "LLMQ_SCHEDULER_INTERVAL_S": "0.5",
    "LLMQ_SWEEPER_INTERVAL_S": "1",
    "LLMQ_REPUBLISH_AFTER_S": "3",
    "LLMQ_DRAIN_TIMEOUT_S": "20",
    "LLMQ_SCALE_DOWN_STABILIZATION_S": "10",
    "LLMQ_SCALE_TO_ZERO_IDLE_S": "600",
    "LLMQ_GPU_COUNT": "0",
    "LLMQ_MAX_GENERATION_S": "60",
    "LLMQ_VISIBILITY_TIMEOUT_S": "300",
    "LLMQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "LLMQ_WEBHOOK_SWEEP_S": "1",
    "LLMQ_WEBHOOK_TIMEOUT_S": "5",
    "LLMQ_WEBHOOK_RETRY_DELAYS_S": "1,2,4,8,15,30",
    "LLMQ_WEBHOOK_JITTER": "0.1",
    "LLMQ_LOG_LEVEL": "INFO",
    # The invariants price every ledger row at the model's token prices and expect a worker's
    # finish; a job the exact cache answers is priced and finished at submit.
    "LLMQ_CACHE_TTL_S": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}

CATALOG = """
[models.echo]
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 30
batch_settle_ms = 10
context_length = 4096
max_new_tokens = 64
default_max_tokens = 8
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"
min_replicas = 1
max_replicas = 2
target_backlog_per_replica = 32

[models.tiny]
source = {{ path = "{tiny}" }}
engine = "hf"
device = "cpu"
max_batch_size = 8
max_batch_wait_ms = 200
batch_settle_ms = 50
max_new_tokens = 16
default_max_tokens = 6
context_length = 128
price_input_per_mtok_usd = "1.5"
price_output_per_mtok_usd = "3"
gpu_hour_usd = "3.6"
min_replicas = 1
max_replicas = 1
"""
MODELS = ("echo", "tiny")


@dataclass
class Process:
    """One supervised child in its own process group, logging to a file."""

    kind: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process itself (its children, such as workers, live on)."""
        if self.alive():
            send_signal(self.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def stop_group(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15, group=True, reap_s=5)


@dataclass
class Stack:
    folder: Path
    tiny_path: Path
    redis_server: PrivateRedis = field(init=False)
    postgres: PrivatePostgres = field(init=False)
    env: dict[str, str] = field(init=False)
    api: Process | None = None
    sender: Process | None = None
    schedulers: list[Process] = field(default_factory=list)
    retired: list[Process] = field(default_factory=list)  # killed schedulers: groups to end
    restarts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.chmod(0o755)  # Postgres, run as its own user, must reach its folder
        self.redis_server = PrivateRedis(self.folder / "redis")
        self.postgres = PrivatePostgres(self.folder / "postgres")
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.catalog = self.folder / "models.toml"
        self.catalog.write_text(CATALOG.format(tiny=self.tiny_path))

    # -- bring up and down ------------------------------------------------------------------

    def start(self, before_workers=lambda: None) -> None:
        """Servers, migrations, the API and the sender; then `before_workers()` (say, wait for
        a model to be built) and the schedulers, which start the workers."""
        self.redis_server.start()
        self.postgres.init()
        self.postgres.start()
        database_url = self.postgres.url(DATABASE)
        ensure_database(database_url)
        migrate(database_url)
        self.env = dict(
            os.environ,
            **ENV,
            LLMQ_DATABASE_URL=database_url,
            LLMQ_REDIS_URL=self.redis_server.url,
            LLMQ_CATALOG_PATH=str(self.catalog),
            LLMQ_CACHE_DIR=str(self.folder / "cache"),
            LLMQ_SECRET_KEY=Fernet.generate_key().decode(),
            LLMQ_SECRET_KEY_FILE=str(self.folder / "secret.key"),
            LLMQ_API_URL=self.api_url,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.api = self._api().start()
        self.sender = self._sender().start()
        before_workers()
        self.schedulers = [self._scheduler().start(), self._scheduler().start()]

    def stop(self) -> None:
        records = []
        with contextlib.suppress(Exception):
            records = events.live_worker_records(self.redis, PREFIX)
        for process in [*self.schedulers, *self.retired, self.api, self.sender]:
            if process is not None:
                process.stop_group()
        for record in records:  # workers adopted from a killed scheduler live outside its group
            if isinstance(record.get("pid"), int):
                send_signal(record["pid"], signal.SIGKILL)
        self.redis_server.kill()
        self.postgres.stop("immediate")

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def _api(self) -> Process:
        argv = self._python("-m", "uvicorn", "--factory", "api.app:create_app", "--host",
                            "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning")  # fmt: skip
        return Process("api", argv, self.env, self._log("api"))

    def _sender(self) -> Process:
        argv = self._python("-m", "cli", "webhook-worker", "--concurrency", "4")
        return Process("webhook-sender", argv, self.env, self._log("webhooks"))

    def _scheduler(self) -> Process:
        argv = self._python("-m", "cli", "scheduler", "--backend", "local")
        for model in MODELS:
            argv += ["--model", model]
        return Process("scheduler", argv, self.env, self._log("scheduler"))

    def _log(self, name: str) -> Path:
        """A fresh log file per start: `<name>-<n>.log`."""
        n = len(list(self.folder.glob(f"{name}-*.log")))
        return self.folder / f"{name}-{n}.log"

    # -- supervision ------------------------------------------------------------------------

    def supervise(self) -> list[str]:
        """Start again whatever died (as systemd's Restart=always would); returns the kinds."""
        started = []
        if self.api is not None and not self.api.alive():
            self.api = self._api().start()
            started.append("api")
        if self.sender is not None and not self.sender.alive():
            self.sender = self._sender().start()
            started.append("webhook-sender")
        for dead in [s for s in self.schedulers if not s.alive()]:
            self.schedulers.remove(dead)
            self.retired.append(dead)
            self.schedulers.append(self._scheduler().start())
            started.append("scheduler")
        for kind in started:
            self.restarts[kind] = self.restarts.get(kind, 0) + 1
        return started

    # -- what is up -------------------------------------------------------------------------

    def api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def leader(self) -> str | None:
        """The acting scheduler's identity (`host:pid`), as it announces itself in Redis."""
        try:
            value = self.redis.get(events.leader_key(PREFIX, list(MODELS)))
        except redis.RedisError:
            return None
        return value.decode() if value else None

    def leader_process(self) -> Process | None:
        identity = self.leader()
        if not identity:
            return None
        pid = int(identity.rsplit(":", 1)[1])
        return next((s for s in self.schedulers if s.pid == pid), None)

    def workers(self, model: str | None = None) -> list[dict]:
        try:
            records = events.live_worker_records(self.redis, PREFIX)
        except redis.RedisError:
            return []
        return [r for r in records if model is None or r.get("model") == model]

    def sender_ready(self) -> bool:
        """The sender's Celery consumer is up: its log says `ready.` since it started."""
        if self.sender is None or not self.sender.alive():
            return False
        return b"ready." in self.sender.log_path.read_bytes()

    def all_up(self) -> dict[str, bool]:
        """Each kind of process, answering: the API, a leader, the sender, a worker per pool."""
        state = {
            "api": self.api_ready(),
            "scheduler": self.leader() is not None,
            "webhook-sender": self.sender is not None and self.sender.alive(),
        }
        for model in MODELS:
            state[f"worker:{model}"] = bool(self.workers(model))
        return state


def create_keys(stack: Stack) -> dict[str, dict]:
    """The suite's keys (admin, plain, budget): key, webhook secret, id, budget."""
    result = subprocess.run([sys.executable, "-m", "reliability.keys"], env=stack.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])
