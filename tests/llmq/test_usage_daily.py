"""The daily usage rollup: triggers keep it equal to the ledger whoever writes, and /v1/usage
and budgets read whole days from it and part-days from the ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from llmq import budgets, jobs, usage_daily
from llmq.db import drop_database, ensure_database, session_scope
from llmq.jobs.finish import Outcome
from llmq.keys import create_key
from llmq.models import Job, JobStatus, LedgerEntry, UsageDaily
from tests.conftest import DATABASE_URL

DAY = datetime(2026, 3, 10, tzinfo=UTC)


def _key(session) -> tuple[uuid.UUID, str]:
    row, plain = create_key(session, f"rollup-{uuid.uuid4().hex[:6]}")
    return row.id, plain


def _job(session, key_id: uuid.UUID, model: str, at: datetime, status=JobStatus.SUCCEEDED) -> Job:
    job = Job(api_key_id=key_id, model=model, status=status, prompt="p", params={},
              created_at=at, finished_at=at, attempts=1)  # fmt: skip
    session.add(job)
    session.flush()
    return job


def _entry(job: Job, at: datetime, cost: str, cached: bool = False) -> LedgerEntry:
    return LedgerEntry(job_id=job.id, api_key_id=job.api_key_id, model=job.model,
                       prompt_tokens=3, completion_tokens=5, cost_usd=Decimal(cost),
                       gpu_cost_usd=Decimal("0.000001"), cached=cached, created_at=at)  # fmt: skip


def _rollup(session, key_ids: list[uuid.UUID]) -> set[tuple]:
    u = UsageDaily
    jobs_ = sa.func.sum(u.jobs)
    rows = session.execute(
        sa.select(u.api_key_id, u.day, u.model, jobs_, sa.func.sum(u.cached_jobs),
                  sa.func.sum(u.prompt_tokens), sa.func.sum(u.completion_tokens),
                  sa.func.sum(u.cost_usd), sa.func.sum(u.gpu_cost_usd))
        .where(u.api_key_id.in_(key_ids))
        .group_by(u.api_key_id, u.day, u.model)
        .having(jobs_ > 0)
    )  # fmt: skip
    return {tuple(r) for r in rows}


def _ledger(session, key_ids: list[uuid.UUID]) -> set[tuple]:
    e = LedgerEntry
    day = sa.cast(sa.func.timezone("UTC", e.created_at), sa.Date)
    rows = session.execute(
        sa.select(e.api_key_id, day, e.model, sa.func.count(),
                  sa.func.count().filter(e.cached), sa.func.sum(e.prompt_tokens),
                  sa.func.sum(e.completion_tokens), sa.func.sum(e.cost_usd),
                  sa.func.sum(e.gpu_cost_usd))
        .where(e.api_key_id.in_(key_ids))
        .group_by(e.api_key_id, day, e.model)
    )  # fmt: skip
    return {tuple(r) for r in rows}


def test_the_rollup_equals_the_ledger_after_every_kind_of_write(environment):
    """Rows written one by one and many at once (the ORM, the worker's `finish_jobs`, plain
    SQL), at the edges of UTC days, from several connections, then updated and deleted (a
    job's delete cascades to its ledger row): the rollup's sums per key, day and model are
    the ledger's at every step."""
    with session_scope() as session:
        (a, _), (b, _) = _key(session), _key(session)
        keys = [a, b]
        late = DAY - timedelta(microseconds=1)  # the last instant of the day before
        for at, cost, cached in [(DAY, "0.5", False), (late, "0.25", True), (DAY, "1", False)]:
            session.add(_entry(_job(session, a, "m1", at), at, cost, cached))
        session.flush()
        assert _rollup(session, keys) == _ledger(session, keys)
        many = [_job(session, b, m, DAY + timedelta(hours=h)) for h in range(30) for m in "xy"]
        session.add_all(_entry(j, j.created_at, "0.001") for j in many)
        for _ in range(2):  # no ledger rows yet: plain SQL writes them below
            _job(session, b, "y", DAY, JobStatus.FAILED)
    with session_scope() as session:
        running = [_job(session, a, "m2", DAY, JobStatus.RUNNING) for _ in range(3)]
    with session_scope() as session:
        outcomes = [Outcome(j.id, 1, True, "out", "stop", 7, 9, cost_usd=Decimal("0.07"))
                    for j in running]  # fmt: skip
        assert len(jobs.finish_jobs(session, outcomes)) == 3
    with session_scope() as session:
        session.execute(
            sa.text("INSERT INTO usage_ledger (job_id, api_key_id, model, prompt_tokens, "
                    "completion_tokens, cost_usd, created_at) "
                    "SELECT id, api_key_id, model, 1, 1, 0.003, created_at FROM jobs "
                    "WHERE api_key_id = :b AND status = 'failed'"),
            {"b": b},
        )  # fmt: skip
        assert _rollup(session, keys) == _ledger(session, keys)
    with session_scope() as session:
        moved = {"cost_usd": LedgerEntry.cost_usd * 3,
                 "created_at": LedgerEntry.created_at - timedelta(days=1)}  # fmt: skip
        session.execute(
            sa.update(LedgerEntry)
            .where(LedgerEntry.api_key_id == b, LedgerEntry.model == "x")
            .values(**moved)
        )
        session.execute(sa.delete(Job).where(Job.id.in_([many[0].id, running[0].id])))
    with session_scope() as session:
        assert _rollup(session, keys) == _ledger(session, keys)
        final = _rollup(session, keys)
    assert sum(r[3] for r in final if r[0] == a and r[2] == "m2") == 2
    assert sum(r[3] for r in final if r[0] == b) == 61


@pytest.mark.parametrize(
    "start, end, days, edges",
    [
        (None, None, (None, None), []),
        ("2026-03-10T00:00", "2026-03-12T00:00", ("2026-03-10", "2026-03-12"), []),
        ("2026-03-10T06:00", None, ("2026-03-11", None),
         [("2026-03-10T06:00", "2026-03-11T00:00")]),
        (None, "2026-03-12T01:00", (None, "2026-03-12"),
         [("2026-03-12T00:00", "2026-03-12T01:00")]),
        ("2026-03-10T06:00", "2026-03-12T01:00", ("2026-03-11", "2026-03-12"),
         [("2026-03-10T06:00", "2026-03-11T00:00"), ("2026-03-12T00:00", "2026-03-12T01:00")]),
        ("2026-03-10T06:00", "2026-03-11T01:00", None, [("2026-03-10T06:00", "2026-03-11T01:00")]),
        ("2026-03-10T20:00-05:00", None, ("2026-03-12", None),
         [("2026-03-11T01:00", "2026-03-12T00:00")]),
    ],
)  # fmt: skip
def test_a_range_splits_into_whole_utc_days_and_the_part_days_around_them(start, end, days, edges):
    def naive_utc(text):
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    split = usage_daily.split(
        None if start is None else naive_utc(start), None if end is None else naive_utc(end)
    )
    expected_days = None if days is None else tuple(d and date.fromisoformat(d) for d in days)
    assert split.days == expected_days
    assert list(split.edges) == [(naive_utc(s), naive_utc(e)) for s, e in edges]


def test_usage_over_part_days_and_budgets_read_what_the_ledger_says(client):
    """/v1/usage by day and by model over ranges that start and end inside days, and a
    budget's spend, equal sums over the ledger's own rows."""
    with session_scope() as session:
        key_id, plain = _key(session)
        for hours in range(0, 24 * 4, 5):
            at = DAY + timedelta(hours=hours)
            session.add(_entry(_job(session, key_id, f"m{hours % 3}", at), at, f"0.0{hours % 7}1"))
    headers = {"Authorization": f"Bearer {plain}"}
    ranges = [(None, None), ("2026-03-10T07:30:00Z", "2026-03-12T13:00:00Z"),
              ("2026-03-11T00:00:00Z", "2026-03-13T00:00:00Z"),
              ("2026-03-11T02:00:00Z", "2026-03-11T20:00:00Z"), ("2026-03-12T05:00:00Z", None)]  # fmt: skip
    for start, end in ranges:
        params = {k: v for k, v in (("start", start), ("end", end)) if v}
        with session_scope() as session:
            query = sa.select(LedgerEntry).where(LedgerEntry.api_key_id == key_id)
            if start:
                query = query.where(LedgerEntry.created_at >= datetime.fromisoformat(start))
            if end:
                query = query.where(LedgerEntry.created_at < datetime.fromisoformat(end))
            rows = session.scalars(query).all()
        for group_by, of in (("day", lambda r: f"{r.created_at.astimezone(UTC):%Y-%m-%d}"),
                             ("model", lambda r: r.model)):  # fmt: skip
            body = client.get("/v1/usage", params=params | {"group_by": group_by}, headers=headers)
            got = {d[group_by]: (d["jobs"], Decimal(d["cost_usd"])) for d in body.json()["data"]}
            want: dict[str, tuple[int, Decimal]] = {}
            for r in rows:
                jobs_, cost = want.get(of(r), (0, Decimal(0)))
                want[of(r)] = (jobs_ + 1, cost + r.cost_usd)
            assert got == want, (start, end, group_by)
    with session_scope() as session:
        since = datetime(2026, 3, 11, tzinfo=UTC)
        spent = budgets.spend(session, key_id, since).settled_usd
        ledger = session.scalar(
            sa.select(sa.func.sum(LedgerEntry.cost_usd)).where(
                LedgerEntry.api_key_id == key_id, LedgerEntry.created_at >= since
            )
        )
    assert spent == ledger


def test_the_migration_fills_the_rollup_from_the_ledger_it_finds(environment):
    """A database with ledger rows from before the rollup existed gets them summed in."""
    root = Path(__file__).resolve().parents[2]
    url = make_url(DATABASE_URL)
    url = url.set(database=f"{url.database}_rollup").render_as_string(False)
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    before = ScriptDirectory.from_config(cfg).get_revision("0017").down_revision
    ensure_database(url)
    engine = sa.create_engine(url)
    try:
        command.upgrade(cfg, before)
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO api_keys (id, name, prefix, key_hash) "
                "VALUES ('00000000-0000-0000-0000-0000000000aa', 'old', 'p', 'h');"
                "INSERT INTO jobs (id, api_key_id, model, status, prompt, params, created_at) "
                "SELECT gen_random_uuid(), '00000000-0000-0000-0000-0000000000aa', "
                "'m' || (i % 2), 'succeeded', 'p', '{}', "
                "'2026-03-10T00:00:00Z'::timestamptz + i * interval '7 hours' "
                "FROM generate_series(1, 40) AS i;"
                "INSERT INTO usage_ledger (job_id, api_key_id, model, prompt_tokens, "
                "completion_tokens, cost_usd, cached, created_at) "
                "SELECT id, api_key_id, model, 2, 3, 0.01, random() < 0.5, created_at FROM jobs"
            ))  # fmt: skip
        command.upgrade(cfg, "head")
        with session_scope(url) as session:
            key = [uuid.UUID("00000000-0000-0000-0000-0000000000aa")]
            assert _rollup(session, key) == _ledger(session, key)
            assert len(_rollup(session, key)) > 10
    finally:
        engine.dispose()
        drop_database(url)
