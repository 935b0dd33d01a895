"""One acting scheduler: the holder of a Postgres advisory lock on a dedicated connection.

The lock is session-level, so it lives exactly as long as the connection: when the leader's
process dies, Postgres drops the connection and the lock with it, and the next scheduler to
try takes it. The connection is direct (never through a transaction pooler, which would hand
the session to someone else).

Keepalives on both ends bound the case where the leader's host vanishes without closing the
connection: Postgres drops the session (and the lock) after about 20 s of silence, and the
leader's own queries fail after 10 s instead of hanging, so it stops acting first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("llmq.scheduler")


def lock_key(models: list[str]) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock, one per set of pools.

    Schedulers started for the same pools compete for one lock; a scheduler for other pools
    (`llmq scheduler --model …`) leads its own.
    """
    name = "llmq.scheduler:" + ",".join(sorted(set(models)))
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _libpq_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


class LeaderLock:
    def __init__(self, database_url: str, key: int):
        self.url = _libpq_url(database_url)
        self.key = key
        self._conn: psycopg.Connection | None = None
        self.is_leader = False

    def check(self) -> bool:
        """Try to be (or stay) the leader; False on any doubt, so two never act at once."""
        try:
            if self._conn is None or self._conn.closed:
                self.is_leader = False
                self._conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                    tcp_user_timeout=10_000,
                )
                self._conn.execute(
                    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 3; "
                    "SET tcp_keepalives_count = 3"
                )
            if self.is_leader:
                self._conn.execute("SELECT 1")  # the lock lives while this session does
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                self.is_leader = bool(row and row[0])
                if self.is_leader:
                    log.info("this scheduler is the leader")
        except psycopg.Error as exc:
            if self.is_leader:
                log.warning("lost the leader lock's connection: %s", exc)
            self.release()
        return self.is_leader

    def release(self) -> None:
        self.is_leader = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
