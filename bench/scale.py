"""Flat costs as work grows: what each everyday operation costs on a nearly empty database
and on one holding many finished jobs and their ledger rows.

The same operations are timed on two private databases in turns: one nearly empty
(BASELINE_ROWS jobs, so its answers are as long as the other's), one where `load` wrote
`rows` finished jobs and ledger rows (several keys and models, spread over `days` days). The
goal is that none costs more than twice as much on the full database.

- submit: POST /v1/jobs of a model with no worker; again for a key with a monthly budget
- list first / deep: GET /v1/jobs, the newest page and one past most of the key's jobs
- list cancelled: GET /v1/jobs?status=cancelled, a status none of the key's jobs has
- get: GET /v1/jobs/{id}
- usage by day / by model: GET /v1/usage of the key, all time
- observe: the scheduler's reads each round (`observe_pools`, `due_work`, throughput)
- sweep: one pass of the sweeper

`python -m bench.scale [ROWS]` runs it alone.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.env import BenchEnv, Proc, api
from bench.report import Figure, Goal

GOAL_RATIO = 2.0
MODELS = ("echo", "echo-unserved", "smollm2-135m")  # models of the bench catalog
SUBMIT_MODEL = "echo-unserved"  # no worker: submitted jobs stay queued
CHUNK_ROWS = 100_000  # rows per statement of `load`
FAILED_EVERY = 50  # one job in this many failed (no ledger row)
# The "empty" side's jobs: enough that both sides' answers have the same size (full pages, a
# row for every day and model), so the ratio is what the database's size costs.
BASELINE_ROWS = 1000

# One statement writes a chunk of jobs and, from what it returned, their ledger rows. Job i
# belongs to key i mod #keys, is created `span_s * (1 - i / total)` seconds ago, and every
# FAILED_EVERY-th one failed.
_LOAD_SQL = sa.text(
    """
    WITH made AS (
      INSERT INTO jobs (id, api_key_id, model, status, prompt, params, output_text,
                        finish_reason, error, attempts, prompt_tokens, completion_tokens,
                        queue_ms, inference_ms, batch_size, worker, created_at, started_at,
                        finished_at)
      SELECT gen_random_uuid(),
             (CAST(:keys AS uuid[]))[1 + i % cardinality(CAST(:keys AS uuid[]))],
             (CAST(:models AS text[]))[1 + (i / 7) % cardinality(CAST(:models AS text[]))],
             CASE WHEN i % :failed_every = :failed_every - 1 THEN 'failed' ELSE 'succeeded' END,
             'Summarize item ' || i || ': ' || repeat('lorem ipsum ', 20),
             '{"max_tokens": 32}'::jsonb,
             repeat('dolor sit amet ', 15),
             'length', NULL, 1, 20 + i % 50, 32, 5, 40, 8, 'bench',
             at, at + interval '5 ms', at + interval '45 ms'
      FROM (SELECT i, now() - make_interval(secs => :span_s * (1 - i::float8 / :total)) AS at
            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i) AS s
      RETURNING id, api_key_id, model, status, prompt_tokens, completion_tokens, finished_at
    )
    INSERT INTO usage_ledger (job_id, api_key_id, model, prompt_tokens, completion_tokens,
                              cost_usd, gpu_cost_usd, created_at)
    SELECT id, api_key_id, model, prompt_tokens, completion_tokens,
           (prompt_tokens * 1.5 + completion_tokens * 3) / 1000000, 0.000001, finished_at
    FROM made WHERE status = 'succeeded'
    """
)


@dataclass(frozen=True)
class Loaded:
    jobs: int
    ledger_rows: int
    seconds: float


def load(
    url: str,
    rows: int,
    key_ids: list[uuid.UUID],
    models: tuple[str, ...] = MODELS,
    days: float = 90,
) -> Loaded:
    """Write `rows` finished jobs of `key_ids` and `models` over the last `days` days, with a
    ledger row for each that succeeded, in statements of CHUNK_ROWS; then VACUUM ANALYZE, as
    autovacuum would have by the time a real database held them, and a CHECKPOINT."""
    started = time.perf_counter()
    engine = sa.create_engine(url)
    try:
        ledger = 0
        for lo in range(0, rows, CHUNK_ROWS):
            with engine.begin() as conn:
                ledger += conn.execute(
                    _LOAD_SQL,
                    {"keys": key_ids, "models": list(models), "failed_every": FAILED_EVERY,
                     "span_s": days * 86400, "total": rows, "lo": lo,
                     "hi": min(rows, lo + CHUNK_ROWS)},
                ).rowcount  # fmt: skip
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
            conn.execute(sa.text("CHECKPOINT"))  # the writes' flush is not the next timing's
    finally:
        engine.dispose()
    return Loaded(rows, ledger, time.perf_counter() - started)


def timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


@contextmanager
def pointed_at(url: str) -> Iterator[None]:
    """This process's settings and sessions use `url` for the block (the sweeper opens its
    sessions on the settings' database)."""
    from llmq.db import _sessionmaker, get_engine
    from llmq.settings import get_settings

    def reset() -> None:
        get_engine.cache_clear()
        _sessionmaker.cache_clear()
        get_settings.cache_clear()

    before = os.environ.get("LLMQ_DATABASE_URL")
    os.environ["LLMQ_DATABASE_URL"] = url
    reset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LLMQ_DATABASE_URL", None)
        else:
            os.environ["LLMQ_DATABASE_URL"] = before
        reset()


def operations(side: Side) -> dict[str, Callable]:
    """Each operation but the sweeper's pass as a call on the side's database."""
    from llmq import job_queries
    from llmq.db import session_scope
    from llmq.models import Job
    from llmq.pools import observe_pools
    from llmq.settings import get_settings

    url, client, key_id = side.url, side.client, side.key_ids[0]
    settings = get_settings()
    rclient = redis.Redis.from_url(settings.redis_url)
    window = timedelta(seconds=settings.throughput_window_s)
    with session_scope(url) as session:
        mine = sa.select(Job).where(Job.api_key_id == key_id)
        count = session.scalar(sa.select(sa.func.count()).select_from(mine.subquery()))
        deep = session.scalars(
            mine.order_by(Job.created_at.desc(), Job.id.desc())
            .offset(max(0, int(count * 0.9) - 1))
            .limit(1)
        ).one()
        cursor, newest = job_queries.encode_cursor(deep), session.scalars(mine.limit(1)).one()

    def get(path: str, **params: object) -> Callable[[], object]:
        return lambda: client.get(path, params=params).raise_for_status()

    def observe() -> None:
        with session_scope(url) as session:
            observe_pools(session, rclient, settings.redis_prefix, list(MODELS))
            job_queries.due_work(session, list(MODELS))
            job_queries.tokens_per_s_per_replica(session, list(MODELS), window)

    job = {"model": SUBMIT_MODEL, "prompt": "How flat is it?", "max_tokens": 4}
    return {
        "submit": lambda: client.post("/v1/jobs", json=job).raise_for_status(),
        "submit, budgeted": lambda: client.post(
            "/v1/jobs", json=job, headers={"Authorization": f"Bearer {side.budgeted}"}
        ).raise_for_status(),
        "list first": get("/v1/jobs", limit=20),
        "list deep": get("/v1/jobs", limit=20, cursor=cursor),
        "list cancelled": get("/v1/jobs", limit=20, status="cancelled"),
        "get": get(f"/v1/jobs/{newest.id}"),
        "usage by day": get("/v1/usage", group_by="day"),
        "usage by model": get("/v1/usage", group_by="model"),
        "observe": observe,
    }


def sweeps_ms(url: str, calls: int) -> list[float]:
    """`calls` passes of a sweeper on the database at `url`, after one to warm up."""
    from llmq.queues import make_celery
    from llmq.settings import get_settings
    from scheduler.sweeper import Sweeper

    with pointed_at(url):  # the sweeper opens its sessions on the settings' database
        settings = get_settings()
        client = redis.Redis.from_url(settings.redis_url)
        sweeper = Sweeper(settings, client, make_celery(settings), list(MODELS))
        sweeper.sweep()
        return [timed_ms(sweeper.sweep) for _ in range(calls)]


@dataclass
class Side:
    """One database of the comparison, with its own API process and a key's client."""

    url: str
    key_ids: list[uuid.UUID]
    budgeted: str  # the second key, which has a monthly budget
    client: httpx.Client
    api: Proc

    @classmethod
    def start(cls, env: BenchEnv, name: str, keys: int) -> Side:
        from cli.devstack import free_port
        from llmq.db import ensure_database, migrate, session_scope
        from llmq.keys import Limits, create_key

        url = make_url(env.database_url)
        url = url.set(database=f"{url.database}_{name}").render_as_string(False)
        ensure_database(url)
        migrate(url)
        budget = Limits(budget_usd=Decimal(10**9), budget_period="month")
        with session_scope(url) as session:  # the second key has a budget: its spend is read
            made = [create_key(session, f"scale-{i}", limits=budget if i == 1 else None)
                    for i in range(keys)]  # fmt: skip
        side = BenchEnv.__new__(BenchEnv)  # the run's environment, on this database
        side.__dict__.update(vars(env), dir=env.dir / name, database_url=url,
                             env=dict(env.env, LLMQ_DATABASE_URL=url))  # fmt: skip
        side.dir.mkdir(exist_ok=True)
        port = free_port()
        headers = {"Authorization": f"Bearer {made[0][1]}", "Cache-Control": "no-store"}
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300)
        return cls(url, [row.id for row, _ in made], made[1][1], client, api(side, port))

    def stop(self) -> None:
        from llmq.db import drop_database

        self.client.close()
        self.api.stop()
        drop_database(self.url)


def scale_run(
    env: BenchEnv,
    rows: int,
    baseline_rows: int = BASELINE_ROWS,
    rounds: int = 5,
    per_round: int = 5,
    keys: int = 4,
) -> dict:
    """Times every operation on two databases of their own, one with `baseline_rows` jobs
    and one with `rows`, a call on each in turn (the sweeper: `per_round` passes on each in
    turn), so both see the machine's load alike; each figure is the median of
    `rounds * per_round` calls."""
    sides: dict[str, Side] = {}
    try:
        for name in ("empty", "full"):
            sides[name] = Side.start(env, f"scale_{name}", keys)
        if baseline_rows:
            load(sides["empty"].url, baseline_rows, sides["empty"].key_ids)
        loaded = load(sides["full"].url, rows, sides["full"].key_ids)
        calls = {name: operations(side) for name, side in sides.items()}
        times: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
        for op in calls["empty"]:
            for name in sides:
                calls[name][op]()  # a first call warms up
            for _ in range(rounds * per_round):  # one call on each side in turn
                for name in sides:
                    times[name].setdefault(op, []).append(timed_ms(calls[name][op]))
        for _ in range(rounds):  # the sweeper runs on one database at a time
            for name, side in sides.items():
                times[name].setdefault("sweep", []).extend(sweeps_ms(side.url, per_round))
    finally:
        for side in sides.values():
            side.stop()
    medians = {name: {op: statistics.median(ms) for op, ms in ops.items()}
               for name, ops in times.items()}  # fmt: skip
    written = dataclasses.asdict(loaded)  # the results file is JSON
    return {"rows": rows, "baseline_rows": baseline_rows, "keys": keys, "load": written, **medians}


def ratios(r: dict) -> dict[str, float]:
    return {op: r["full"][op] / r["empty"][op] for op in r["empty"]}


def figures(r: dict) -> list[Figure]:
    """One row: the worst ratio, with every operation's milliseconds small → full."""
    each = ratios(r)
    worst = max(each, key=each.__getitem__)
    loaded = Loaded(**r["load"])
    how = (
        f"ms per call, a database with {r['baseline_rows']:,} finished jobs → one with "
        f"{r['rows']:,} "
        f"({loaded.ledger_rows:,} ledger rows, {r['keys']} keys, 90 days; written in "
        f"{loaded.seconds:.0f} s), measured in turns: "
        + "; ".join(
            f"{op} {r['empty'][op]:.1f} → {r['full'][op]:.1f} ({each[op]:.2f}x)" for op in each
        )
    )
    return [
        Figure(
            f"Cost at {r['rows']:,} jobs / {r['baseline_rows']:,}",
            each[worst],
            f"{each[worst]:.2f}x ({worst})",
            how,
            Goal("≤", GOAL_RATIO, "x"),
        )
    ]


if __name__ == "__main__":
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    env = BenchEnv()
    try:
        result = scale_run(env, rows)
    finally:
        env.teardown()
    for figure in figures(result):
        print(figure.name, figure.shown)
        print(figure.how)
