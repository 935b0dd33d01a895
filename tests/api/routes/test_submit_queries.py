"""What a submit costs Postgres: once its key is cached, a single INSERT and no other
statement; a bulk submit's rows go through one COPY (counted with SQLAlchemy's own events;
psycopg prepares a statement a connection runs repeatedly by itself)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine

BODY = {"model": "unserved", "prompt": "count me", "max_tokens": 1}


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        seen.append(" ".join(statement.split()[:3]))

    event.listen(Engine, "before_cursor_execute", record)  # every engine of the process
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_submit_is_one_insert_once_its_key_is_cached(client, auth):
    for _ in range(3):  # the key is looked up, then cached
        assert client.post("/v1/jobs", json=BODY, headers=auth).status_code == 202
    with statements() as seen:
        assert client.post("/v1/jobs", json=BODY, headers=auth).status_code == 202
    assert seen == ["INSERT INTO jobs"]


def test_bulk_submits_run_no_statement_per_job(client, auth):
    client.post("/v1/jobs/bulk", json={"jobs": [BODY]}, headers=auth).raise_for_status()
    with statements() as seen:
        bulk = {"jobs": [BODY] * 50}
        assert client.post("/v1/jobs/bulk", json=bulk, headers=auth).status_code == 202
    assert seen == []  # the rows go through one COPY, on the driver's own cursor
