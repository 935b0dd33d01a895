"""The submit path's floor does what it claims: one row and one queued id per submit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from bench import bare_submit, submit_path
from llmq.db import get_engine
from tests.conftest import REDIS_PREFIX


@pytest.fixture
def bare_table(environment):
    """The bare endpoint's table in this run's database, dropped after: it is not llmq's, and
    the migrations test compares the database with llmq's models."""
    bare_submit.create_table(get_engine())
    yield
    with get_engine().begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {bare_submit.TABLE}"))


def test_the_bare_endpoint_writes_one_row_and_pushes_one_id(bare_table, redis_client):
    with TestClient(bare_submit.create_app()) as bare:
        job = bare.post("/submit", json=submit_path.BODY).raise_for_status().json()
    with get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT status FROM {bare_submit.TABLE} WHERE id = :id"), {"id": job["id"]}
        ).all()
    assert rows == [("queued",)]
    assert redis_client.lrange(bare_submit.queue_key(REDIS_PREFIX), 0, -1) == [job["id"].encode()]


def test_the_figure_is_the_median_pair_ratio_against_its_goal():
    r = {"ours_per_s": [500, 700, 650, 640, 660], "bare_per_s": [1000] * 5, "count": 10,
         "threads": 2, "workers": 2}  # fmt: skip
    figure = submit_path.figure(r)
    assert figure.value == 0.65 and figure.verdict == "met"
    r["ours_per_s"] = [500, 560, 650, 700, 620]  # the middle half of the pairs straddles 0.6
    assert submit_path.figure(r).verdict == "inconclusive: spread too wide"
