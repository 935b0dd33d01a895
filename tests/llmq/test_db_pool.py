"""The pool checks a connection that sat idle before handing it out, and only then."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from llmq.db import make_engine
from tests.conftest import DATABASE_URL


def backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT pg_backend_pid()"))


def terminate(pid: int) -> None:
    with make_engine(DATABASE_URL, math.inf).connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_an_idle_connection_that_died_is_replaced_before_use(environment):
    engine = make_engine(DATABASE_URL, idle_ping_s=0)  # every checkout counts as idle
    first = backend_pid(engine)
    terminate(first)
    assert backend_pid(engine) != first  # pinged, found dead, replaced: no error
    engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(environment):
    engine = make_engine(DATABASE_URL, idle_ping_s=math.inf)
    first = backend_pid(engine)
    terminate(first)
    with pytest.raises(sa.exc.OperationalError):  # no ping: its first statement finds it dead
        backend_pid(engine)
    assert backend_pid(engine) != first  # and the pool replaced it after that
    engine.dispose()
