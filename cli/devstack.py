"""The local stack behind `llmq dev` and `llmq demo`: API, scheduler, and Flower.

The scheduler runs with the local backend: it starts a model's worker when the first job
for it waits and stops it once the pool has been idle, so no model is loaded before it is
needed.

Redis and Postgres come from LLMQ_REDIS_URL / LLMQ_DATABASE_URL when they answer; otherwise
the stack starts its own from the machine's binaries under `.llmq/` and stops them on exit.
Every child runs in its own process group, so stopping leaves nothing behind. Once the stack is
up, `supervise()` restarts a child that exits, after a back-off that grows while it keeps
crashing (`cli.children`, with the back-off the scheduler uses for its workers).

Without `LLMQ_SECRET_KEY` the stack hands its processes the key kept in `LLMQ_SECRET_KEY_FILE`
(made on first use), so keys made by `llmq keys create` in the same folder stay readable.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cli.children import Children
from llmq import events
from llmq.crypto import local_key
from llmq.db import ensure_database, migrate
from llmq.errors import LlmqError
from llmq.settings import Settings

INSTALL_HINT = (
    "install redis-server and PostgreSQL (apt-get install redis-server postgresql), "
    "or run `docker compose up -d redis postgres`"
)


class StackError(LlmqError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def postgres_answers(url: str) -> bool:
    engine = sa.create_engine(
        make_url(url).set(database="postgres"), connect_args={"connect_timeout": 2}
    )
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class Stack:
    """Start with `with Stack(...) as stack:`; `stack.env` is what child processes see."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int = 8000,
        models: list[str],
        flower: bool = True,
        data_dir: Path = Path(".llmq"),
        log=print,
        quiet: bool = False,
    ):
        self.settings, self.port, self.models, self.flower = settings, port, models, flower
        self.data_dir, self.log = data_dir.resolve(), log
        # quiet: each process writes to .llmq/logs/<name>.log instead of this terminal
        self.log_dir = self.data_dir / "logs" if quiet else None
        self._pg_data: Path | None = None
        self.env = dict(os.environ)
        self.children = Children(self.env, self.log_dir, log)
        self.api_url = f"http://127.0.0.1:{port}"
        self.flower_auth = settings.flower_basic_auth or f"llmq:{secrets.token_urlsafe(9)}"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- services ---------------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        redis_url = self._redis(self.settings.redis_url)
        database_url = self._postgres(self.settings.database_url)
        self.env.update(
            LLMQ_REDIS_URL=redis_url,
            LLMQ_DATABASE_URL=database_url,
            LLMQ_API_URL=self.api_url,
            PYTHONUNBUFFERED="1",
        )
        # A local stack delivers webhooks to local receivers; production allows public hosts only.
        self.env.setdefault("LLMQ_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
        # A local stack shrinks idle pools sooner than a production default would.
        self.env.setdefault("LLMQ_SCALE_DOWN_STABILIZATION_S", "30")
        self.env.setdefault("LLMQ_SCALE_TO_ZERO_IDLE_S", "60")
        self.env.setdefault("LLMQ_API_METRICS_HOST", "127.0.0.1")
        if not self.settings.secret_key:
            self.env["LLMQ_SECRET_KEY"] = local_key(self.settings.secret_key_file).decode()
        if self.flower:
            self.env.setdefault("LLMQ_FLOWER_URL", f"http://127.0.0.1:{self.settings.flower_port}")
        if ensure_database(database_url):
            self.log(f"created database {make_url(database_url).database}")
        migrate(database_url)
        api = ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self._spawn("api", [sys.executable, "-m", "cli", "api", *api])
        scheduler = [sys.executable, "-m", "cli", "scheduler", "--backend", "local"]
        for model in self.models:
            scheduler += ["--model", model]
        self._spawn("scheduler", scheduler)
        self._spawn("webhooks", [sys.executable, "-m", "cli", "webhook-worker"])
        if self.flower:
            self.env["LLMQ_FLOWER_BASIC_AUTH"] = self.flower_auth
            self._spawn("flower", [sys.executable, "-m", "cli", "flower"])
        self._wait_ready()

    def _redis(self, url: str) -> str:
        if redis_answers(url):
            return url
        binary = shutil.which("redis-server")
        if not binary:
            raise StackError(
                f"Redis at {url} does not answer and redis-server is missing: {INSTALL_HINT}"
            )
        port = free_port()
        folder = self.data_dir / "redis"
        folder.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
                "--maxmemory-policy",
                "noeviction",
            ],
        )
        local = f"redis://127.0.0.1:{port}/0"
        _wait(lambda: redis_answers(local), 10, "local redis-server")
        self.log(f"started redis-server on port {port}")
        return local

    def _postgres(self, url: str) -> str:
        if postgres_answers(url):
            return url
        initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        if not (initdb and pg_ctl):
            raise StackError(
                f"Postgres at {url} does not answer and initdb is missing: {INSTALL_HINT}"
            )
        if os.geteuid() == 0:
            raise StackError(
                f"Postgres at {url} does not answer, and initdb refuses to run as root: "
                "start the machine's PostgreSQL, set LLMQ_DATABASE_URL, or run "
                "`docker compose up -d postgres`"
            )
        data = self.data_dir / "postgres"
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
                check=True,
                capture_output=True,
            )
        port = free_port()
        subprocess.run(
            [
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(self.data_dir / "postgres.log"),
                "-w",
                "start",
                "-o",
                f"-p {port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        self._pg_data = data
        self.log(f"started PostgreSQL on port {port}")
        database = make_url(url).database or "llmq"
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.children.spawn(name, argv)

    def supervise(self) -> None:
        """Restart a child that died (after its back-off); `llmq dev` calls it every second."""
        self.children.supervise()

    def _wait_ready(self) -> None:
        _wait(self._api_ready, 60, "the API")
        client = redis.Redis.from_url(self.env["LLMQ_REDIS_URL"])
        prefix = self.settings.redis_prefix
        _wait(
            lambda: client.exists(events.leader_key(prefix, self.models)),
            60,
            "the scheduler",
            self._check_children,
        )

    def _api_ready(self) -> bool:
        self._check_children()
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _check_children(self) -> None:
        child = self.children.first_exited()
        if child is not None:
            raise StackError(
                f"{child.name} exited with code {child.proc.returncode} while starting"
            )

    # -- shutdown ---------------------------------------------------------------------------

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM every child group (workers finish what they hold), then SIGKILL stragglers."""
        self.children.stop(grace_s)
        if self._pg_data is not None:
            subprocess.run(
                [str(_pg_binary("pg_ctl")), "-D", str(self._pg_data), "-m", "fast", "stop"],
                capture_output=True,
            )
            self._pg_data = None


def _wait(check, timeout_s: float, what: str, on_tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if on_tick:
            on_tick()
        if check():
            return
        time.sleep(0.2)
    raise StackError(f"{what} did not become ready within {timeout_s:.0f}s")
