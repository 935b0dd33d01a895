"""The leader lock on real Postgres: one holder; losing the session loses the lead."""

from __future__ import annotations

import sqlalchemy as sa

from llmq.db import get_engine
from scheduler.leader import LeaderLock, lock_key
from tests.conftest import DATABASE_URL


def _terminate(lock: LeaderLock) -> None:
    pid = lock._conn.info.backend_pid
    with get_engine().connect() as conn:
        assert conn.scalar(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})


def test_one_holder_and_a_terminated_session_hands_over(environment):
    key = lock_key(["leader-test"])
    first, second = LeaderLock(DATABASE_URL, key), LeaderLock(DATABASE_URL, key)
    other_pools = LeaderLock(DATABASE_URL, lock_key(["other-pools"]))
    try:
        assert first.check() and not second.check()
        assert first.check() and not second.check()  # holding is stable
        assert other_pools.check()  # schedulers of other pools lead their own

        _terminate(first)  # e.g. an operator, or a network cut Postgres noticed
        assert not first.check()  # the leader finds out and stops acting
        assert second.check()
        assert not first.check()  # and does not win it back while the other holds it

        second.release()
        assert first.check()
    finally:
        for lock in (first, second, other_pools):
            lock.release()


def test_the_key_depends_on_the_set_of_pools_not_their_order():
    assert lock_key(["a", "b"]) == lock_key(["b", "a", "a"])
    assert lock_key(["a"]) != lock_key(["a", "b"])
