"""Budgets (reserve at submit, settle in the ledger, release on cancel) and usage reports."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from llmq import budgets, jobs
from llmq.db import session_scope
from llmq.keys import Limits, create_key
from llmq.models import Job, LedgerEntry
from tests.conftest import wait_final
from tests.tenancy_helpers import ApiServer

# echo-priced: $1000 per million input tokens, $2000 per million output tokens.
# "alpha beta gamma" is 16 bytes: the estimate is 16 + 8 = 24 prompt tokens; with
# max_tokens 4 the worst case is 24 * 0.001 + 4 * 0.002 = $0.032. The echo engine really
# counts 3 prompt and 3 completion tokens: 3 * 0.001 + 3 * 0.002 = $0.009.
BODY = {"model": "echo-priced", "prompt": "alpha beta gamma", "max_tokens": 4}
WORST, ACTUAL = Decimal("0.032"), Decimal("0.009")


def budget_key(budget: str, period: str = "day") -> tuple[uuid.UUID, dict[str, str]]:
    limits = Limits(budget_usd=Decimal(budget), budget_period=period)
    with session_scope() as session:
        row, plain = create_key(session, f"budget-{uuid.uuid4().hex[:6]}", limits=limits)
    return row.id, {"Authorization": f"Bearer {plain}"}


@pytest.mark.parametrize(
    "period, now, start, end",
    [
        ("day", "2026-03-31T23:59:59+00:00", "2026-03-31T00:00:00+00:00", "2026-04-01T00:00:00+00:00"),
        ("day", "2026-03-31T22:30:00-05:00", "2026-04-01T00:00:00+00:00", "2026-04-02T00:00:00+00:00"),
        ("month", "2026-02-14T10:00:00+00:00", "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"),
        ("month", "2026-12-31T10:00:00+00:00", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ],
)  # fmt: skip
def test_budget_periods_are_utc_days_and_months(period, now, start, end):
    moment = datetime.fromisoformat(now)
    assert budgets.period_start(period, moment) == datetime.fromisoformat(start)
    assert budgets.period_end(period, moment) == datetime.fromisoformat(end)


@pytest.mark.parametrize(
    "text_bytes, messages, context, expected",
    [(16, 0, 4096, 24), (100, 2, 4096, 124), (10_000, 1, 2048, 2048)],
)
def test_prompt_estimate_is_bounded_by_the_context(text_bytes, messages, context, expected):
    assert budgets.estimate_prompt_tokens(text_bytes, messages, context) == expected


def _key_totals(key_id: uuid.UUID) -> tuple[Decimal, Decimal, int]:
    with session_scope() as session:
        ledger = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.cost_usd), 0)).where(
                LedgerEntry.api_key_id == key_id
            )
        )
        reserved = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(Job.reserved_cost_usd), 0)).where(
                Job.api_key_id == key_id, Job.status.in_(("queued", "running"))
            )
        )
        rows = session.scalar(sa.select(sa.func.count()).where(LedgerEntry.api_key_id == key_id))
    return Decimal(ledger), Decimal(reserved), rows


def test_cancel_releases_a_reservation(client):
    key_id, headers = budget_key("0.05")  # room for one worst case ($0.032), not two
    first = client.post("/v1/jobs", json=BODY, headers=headers)  # no worker: stays queued
    assert first.status_code == 202
    assert _key_totals(key_id)[1] == WORST
    refused = client.post("/v1/jobs", json=BODY, headers=headers)
    assert refused.status_code == 402
    problem = refused.json()
    assert problem["type"] == "/problems/budget-exceeded" and problem["status"] == 402
    assert problem["budget"]["budget_usd"] == "0.05"
    assert problem["budget"]["reserved_usd"] == "0.032"
    assert problem["budget"]["spent_usd"] == "0"
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers).status_code == 200
    assert _key_totals(key_id)[1] == 0
    second = client.post("/v1/jobs", json=BODY, headers=headers)
    assert second.status_code == 202
    client.post(f"/v1/jobs/{second.json()['id']}/cancel", headers=headers)


def test_a_budgeted_key_is_refused_at_its_budget_and_the_books_agree(client, start_worker):
    start_worker("echo-priced")
    key_id, headers = budget_key("0.05")
    finished = []
    while True:
        response = client.post("/v1/jobs", json=BODY, headers=headers)
        if response.status_code != 202:
            break
        job = wait_final(client, headers, response.json()["id"])
        assert job["status"] == "succeeded" and Decimal(job["usage"]["cost_usd"]) == ACTUAL
        finished.append(job)
        assert len(finished) < 10
    # $0.009 each: after 2 jobs 0.018 + 0.032 fits; after 3, 0.027 + 0.032 > 0.05.
    assert response.status_code == 402 and len(finished) == 3
    assert response.json()["budget"]["spent_usd"] == "0.027"
    ledger, reserved, rows = _key_totals(key_id)
    assert (ledger, reserved, rows) == (ACTUAL * 3, 0, 3)
    usage = client.get("/v1/usage", params={"group_by": "model"}, headers=headers).json()
    assert Decimal(usage["total"]["cost_usd"]) == ledger
    assert usage["total"]["jobs"] == 3
    assert Decimal(usage["total"]["cost_usd"]) <= Decimal("0.05")


def test_usage_csv_matches_json_and_the_ledger(client, start_worker):
    start_worker("echo-priced")
    key_id, headers = budget_key("10")
    ids = [client.post("/v1/jobs", json=BODY, headers=headers).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_final(client, headers, job_id)
    for group_by in ("model", "day", "key"):
        params = {"group_by": group_by}
        as_json = client.get("/v1/usage", params=params, headers=headers).json()
        response = client.get("/v1/usage", params=params | {"format": "csv"}, headers=headers)
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r[group_by] for r in rows] == [str(d[group_by]) for d in as_json["data"]]
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(as_json["total"]["cost_usd"])
        assert Decimal(as_json["total"]["cost_usd"]) == _key_totals(key_id)[0] == ACTUAL * 3
    today = datetime.now(UTC).date()
    window = {"group_by": "day", "start": f"{today}T00:00:00Z", "end": "2000-01-01T00:00:00Z"}
    assert client.get("/v1/usage", params=window, headers=headers).json()["data"] == []


def test_llmq_usage_prints_a_table(client, start_worker):
    start_worker("echo-priced")
    _, headers = budget_key("10")
    job_id = client.post("/v1/jobs", json=BODY, headers=headers).json()["id"]
    wait_final(client, headers, job_id)
    server = ApiServer().wait_ready()
    try:
        plain = headers["Authorization"].removeprefix("Bearer ")
        env = {"LLMQ_API_URL": server.url, "LLMQ_API_KEY": plain, "COLUMNS": "200"}
        result = subprocess.run(
            [sys.executable, "-m", "cli", "usage", "--group-by", "model"],
            capture_output=True, text=True, timeout=120, env={**__import__("os").environ, **env},
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "echo-priced" in result.stdout and "0.009" in result.stdout and "total" in result.stdout


def test_a_failed_job_releases_its_reservation_and_costs_nothing(client, start_worker):
    start_worker("echo-priced")
    key_id, headers = budget_key("10")
    long_prompt = "w " * 4096  # as many words as the context: the echo engine fails it
    body = {"model": "echo-priced", "prompt": long_prompt, "max_tokens": 4}
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    final = wait_final(client, headers, job["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "context_length_exceeded"
    ledger, reserved, rows = _key_totals(key_id)
    assert (ledger, reserved, rows) == (0, 0, 1)


def test_budgets_and_concurrency_hold_across_two_replicas():
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    servers = [ApiServer().wait_ready(), ApiServer().wait_ready()]
    try:
        # No echo-priced worker runs here, so every admitted job keeps its reservation.
        _, budgeted = budget_key("0.1")  # three worst cases ($0.096) fit, four do not
        with session_scope() as session:
            _, plain = create_key(session, "capped", limits=Limits(max_concurrent=3))
        capped = {"Authorization": f"Bearer {plain}"}

        def post(args: tuple[int, dict, dict]) -> int:
            i, headers, body = args
            url = f"{servers[i % 2].url}/v1/jobs"
            return httpx.post(url, json=body, headers=headers, timeout=60).status_code

        idle = {"model": "idle", "prompt": "wait", "max_tokens": 4}
        with ThreadPoolExecutor(12) as pool:
            budget_codes = list(pool.map(post, [(i, budgeted, BODY) for i in range(12)]))
            capped_codes = list(pool.map(post, [(i, capped, idle) for i in range(12)]))
    finally:
        for server in servers:
            server.stop()
    assert sorted(budget_codes) == [202] * 3 + [402] * 9
    assert sorted(capped_codes) == [202] * 3 + [429] * 9


def test_admin_keys_see_every_keys_usage_and_others_their_own(client, start_worker):
    from tests.conftest import make_key

    start_worker("echo-priced")
    keys_made = [budget_key("10") for _ in range(2)]
    for _, headers in keys_made:
        wait_final(
            client, headers, client.post("/v1/jobs", json=BODY, headers=headers).json()["id"]
        )
    admin = {"Authorization": f"Bearer {make_key('usage-admin', admin=True)}"}
    with session_scope() as session:
        names = {
            str(session.scalar(sa.text("SELECT name FROM api_keys WHERE id = :i"), {"i": key_id}))
            for key_id, _ in keys_made
        }
    everyone = client.get("/v1/usage", params={"group_by": "key"}, headers=admin).json()
    assert names <= {row["key"] for row in everyone["data"]}
    own = client.get("/v1/usage", params={"group_by": "key"}, headers=keys_made[0][1]).json()
    assert len(own["data"]) == 1 and own["data"][0]["key"] in names
    assert Decimal(own["total"]["cost_usd"]) == ACTUAL


def test_spend_sees_a_batch_that_settles_while_it_reads_once(client):
    """A worker's finish moves a job's cost from the reservation to the ledger. Spend read
    between two of its own statements would count that cost zero times; it must count it
    once, from one snapshot, whenever the finish commits."""
    key_id, _ = budget_key("5")
    with session_scope() as session:
        job = jobs.create_job(
            session,
            key_id,
            jobs.NewJob(model="echo-priced", params={}, prompt="x", reserved_cost_usd=Decimal(1)),
        )
    with session_scope() as session:
        (claimed,) = jobs.claim_jobs(session, [job.id], "w", timedelta(minutes=5))
    outcome = jobs.Outcome(
        job_id=job.id, attempt=claimed.attempts, succeeded=True, text="y",
        prompt_tokens=1, completion_tokens=1, cost_usd=Decimal("0.4"),
    )  # fmt: skip
    finished: list[uuid.UUID] = []

    def finish_after_the_first_read(*_args) -> None:
        if not finished:  # another transaction commits the batch right after this statement
            with session_scope() as worker:
                finished.extend(jobs.finish_jobs(worker, [outcome]))

    since = budgets.period_start("day", datetime.now(UTC))
    with session_scope() as session:
        connection = session.connection()
        sa.event.listen(connection, "after_cursor_execute", finish_after_the_first_read)
        try:
            seen = budgets.spend(session, key_id, since)
        finally:
            sa.event.remove(connection, "after_cursor_execute", finish_after_the_first_read)
    assert finished == [job.id]
    assert (seen.settled_usd, seen.reserved_usd) == (0, 1)  # the snapshot before the finish
    with session_scope() as session:
        after = budgets.spend(session, key_id, since)
    assert (after.settled_usd, after.reserved_usd) == (Decimal("0.4"), 0)
