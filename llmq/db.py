"""Engine and session factories (sync SQLAlchemy over psycopg 3), one pool per process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from llmq.settings import get_settings

IDLE_PING_S = 1.0  # a pooled connection idle longer than this is pinged before it is used


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    return make_engine(url or get_settings().database_url, IDLE_PING_S)


def make_engine(url: str, idle_ping_s: float) -> Engine:
    """A pool whose connections are checked after `idle_ping_s` in the pool, not at every
    checkout: a busy API reuses its connections within milliseconds, and a ping each time
    (`pool_pre_ping`) would cost a second Postgres round trip per request. A connection that
    fails its ping is replaced, along with every connection older than it."""
    # hide_parameters: an error's message never carries a prompt or an output into a log.
    engine = sa.create_engine(url, pool_size=10, max_overflow=20, hide_parameters=True)

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_after_idle(dbapi_connection, record, proxy) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_ping_s:
            return  # a new connection, or one used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.InvalidatePoolError("the connection failed its ping") from exc

    return engine


@lru_cache
def _sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error."""
    with _sessionmaker(url).begin() as session:
        yield session


@lru_cache
def _statement_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    engine = get_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def statement_scope(url: str | None = None) -> Iterator[Session]:
    """A session whose statements each commit on their own: no BEGIN and no COMMIT, one
    round trip per statement instead of three. Only for work that is a single statement
    (a lone job's INSERT), which is atomic by itself."""
    with _statement_sessionmaker(url)() as session:
        yield session


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it is missing. Returns True when it was created."""
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            )
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
            return not exists
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def migrate(url: str | None = None) -> None:
    """Apply every Alembic migration (`alembic upgrade head`) to `url`."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    command.upgrade(cfg, "head")
