"""Private Redis and Postgres servers that a suite may kill and restart at will.

They listen on free loopback ports with their data in a folder of the run, so nothing the
machine's shared servers hold is ever touched. Postgres refuses to run as root: as root the
server runs as the `postgres` user (through `runuser`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from cli.devstack import _pg_binary, free_port
from llmq.processes import stop_process

POSTGRES_USER = "postgres"


class ServiceError(RuntimeError):
    pass


def _wait(check, timeout_s: float, what: str) -> float:
    """Wait until `check()` is true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        time.sleep(0.1)
    raise ServiceError(f"{what} did not answer within {timeout_s:.0f}s")


def available() -> str | None:
    """Why private servers cannot run here, or None when they can."""
    if not shutil.which("redis-server"):
        return "redis-server is not installed"
    if not (_pg_binary("initdb") and _pg_binary("pg_ctl")):
        return "PostgreSQL's initdb/pg_ctl are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            return "running as root and there is no `postgres` user to run Postgres as"
        if not shutil.which("runuser"):
            return "running as root and runuser is missing"
    return None


class PrivateRedis:
    """redis-server on a fixed free port; snapshots only when asked (SAVE)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20) -> float:
        argv = [
            str(shutil.which("redis-server")), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            "--dbfilename", "dump.rdb", "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        return _wait(client.ping, timeout_s, "private redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=0, group=True)

    def restart(self, keep_data: bool) -> float:
        """Crash and start again: with the data of a SAVE taken just before, or with none."""
        dump = self.folder / "dump.rdb"
        if keep_data:
            redis.Redis.from_url(self.url, socket_timeout=10).save()
        self.kill()
        if not keep_data:
            dump.unlink(missing_ok=True)
        return self.start()


class PrivatePostgres:
    """A Postgres cluster of its own (initdb), stopped and started with pg_ctl."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data = folder / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if self.as_root:
            argv = ["runuser", "-u", POSTGRES_USER, "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self.as_root:
            # The caller's run folder must be searchable by the server's user (mode 0755).
            user = pwd.getpwnam(POSTGRES_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run([str(_pg_binary("initdb")), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--no-sync"])  # fmt: skip

    def start(self, timeout_s: float = 60) -> float:
        started = time.monotonic()
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=300"  # fsync off: safe while the OS stays up
        )
        result = self._run(
            [str(_pg_binary("pg_ctl")), "-D", str(self.data), "-l",
             str(self.folder / "postgres.log"), "-w", "-t", str(int(timeout_s)),
             "start", "-o", options],
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"pg_ctl start failed: {result.stderr or result.stdout}")
        engine = sa.create_engine(self.url("postgres"), connect_args={"connect_timeout": 2})
        try:
            _wait(lambda: engine.connect().close() is None, timeout_s, "private Postgres")
        finally:
            engine.dispose()
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        self._run([str(_pg_binary("pg_ctl")), "-D", str(self.data), "-m", mode, "-w", "stop"],
                  check=False)  # fmt: skip

    def restart(self) -> float:
        """An abrupt stop (`immediate`: no checkpoint, crash recovery on start), then start."""
        self.stop("immediate")
        return self.start()
