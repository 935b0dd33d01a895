"""Flat costs as work grows: what each everyday operation costs on an empty database and on
one holding many finished jobs and their ledger rows.

The same operations are timed twice, on a private database: empty (but for a few jobs the
submits made), then after `load` wrote `rows` finished jobs and ledger rows (several keys
and models, spread over `days` days). Each figure is the median of `calls` calls; the goal
is that none costs more than twice as much on the full database.

- submit: POST /v1/jobs of a model with no worker
- list first / deep: GET /v1/jobs, the newest page and one past most of the key's jobs
- list cancelled: GET /v1/jobs?status=cancelled, a status none of the key's jobs has
- get: GET /v1/jobs/{id}
- usage by day / by model: GET /v1/usage of the key, all time
- observe: the scheduler's reads each round (`observe_pools`, `due_work`, throughput)
- sweep: one pass of the sweeper

`python -m bench.scale [ROWS]` runs it alone.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.env import BenchEnv, api
from bench.report import Figure, Goal

GOAL_RATIO = 2.0
MODELS = ("echo", "echo-unserved", "smollm2-135m")  # models of the bench catalog
SUBMIT_MODEL = "echo-unserved"  # no worker: submitted jobs stay queued
CHUNK_ROWS = 100_000  # rows per statement of `load`
FAILED_EVERY = 50  # one job in this many failed (no ledger row)

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


def median_ms(call: Callable[[], object], calls: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@contextmanager
def pointed_at(url: str) -> Iterator[None]:
    """This process's settings and sessions use `url` for the block (the sweeper and the
    scheduler's reads open their own sessions)."""
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


def measure(client: httpx.Client, key_id: uuid.UUID, calls: int) -> dict[str, float]:
    """Each operation's median milliseconds on the database as it is."""
    from llmq import job_queries
    from llmq.db import session_scope
    from llmq.pools import observe_pools
    from llmq.queues import make_celery
    from llmq.settings import get_settings
    from scheduler.sweeper import Sweeper

    settings = get_settings()
    rclient = redis.Redis.from_url(settings.redis_url)
    job = {"model": SUBMIT_MODEL, "prompt": "How flat is it?", "max_tokens": 4}
    ms = {"submit": median_ms(lambda: client.post("/v1/jobs", json=job).raise_for_status(), calls)}
    with session_scope() as session:
        mine = sa.select(job_queries.Job).where(job_queries.Job.api_key_id == key_id)
        count = session.scalar(sa.select(sa.func.count()).select_from(mine.subquery()))
        deep = session.scalars(
            mine.order_by(job_queries.Job.created_at.desc(), job_queries.Job.id.desc())
            .offset(max(0, int(count * 0.9) - 1))
            .limit(1)
        ).one()
        cursor, newest = job_queries.encode_cursor(deep), session.scalars(mine.limit(1)).one()

    def get(path: str, **params: object) -> Callable[[], object]:
        return lambda: client.get(path, params=params).raise_for_status()

    ms["list first"] = median_ms(get("/v1/jobs", limit=20), calls)
    ms["list deep"] = median_ms(get("/v1/jobs", limit=20, cursor=cursor), calls)
    ms["list cancelled"] = median_ms(get("/v1/jobs", limit=20, status="cancelled"), calls)
    ms["get"] = median_ms(get(f"/v1/jobs/{newest.id}"), calls)
    ms["usage by day"] = median_ms(get("/v1/usage", group_by="day"), calls)
    ms["usage by model"] = median_ms(get("/v1/usage", group_by="model"), calls)
    window = timedelta(seconds=settings.throughput_window_s)

    def observe() -> None:
        with session_scope() as session:
            observe_pools(session, rclient, settings.redis_prefix, list(MODELS))
            job_queries.due_work(session, list(MODELS))
            job_queries.tokens_per_s_per_replica(session, list(MODELS), window)

    ms["observe"] = median_ms(observe, calls)
    sweeper = Sweeper(settings, rclient, make_celery(settings), list(MODELS))
    ms["sweep"] = median_ms(sweeper.sweep, calls)
    return ms


def scale_run(env: BenchEnv, rows: int, calls: int = 15, keys: int = 4) -> dict:
    """Times every operation on an empty database of its own, loads it, times them again."""
    from cli.devstack import free_port
    from llmq.db import drop_database, ensure_database, migrate, session_scope
    from llmq.keys import create_key

    url = make_url(env.database_url)
    url = url.set(database=f"{url.database}_scale").render_as_string(False)
    ensure_database(url)
    migrate(url)
    scaled = BenchEnv.__new__(BenchEnv)
    scaled.__dict__.update(vars(env), database_url=url, env=dict(env.env, LLMQ_DATABASE_URL=url))
    port = free_port()
    api_proc = api(scaled, port)
    try:
        with pointed_at(url):
            with session_scope() as session:
                made = [create_key(session, f"scale-{i}") for i in range(keys)]
            key_ids, secret = [row.id for row, _ in made], made[0][1]
            headers = {"Authorization": f"Bearer {secret}", "Cache-Control": "no-store"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                              timeout=300) as client:  # fmt: skip
                empty = measure(client, key_ids[0], calls)
                loaded = load(url, rows, key_ids)
                full = measure(client, key_ids[0], calls)
    finally:
        api_proc.stop()
        drop_database(url)
    return {"rows": rows, "keys": keys, "load": loaded, "empty": empty, "full": full}


def ratios(r: dict) -> dict[str, float]:
    return {op: r["full"][op] / r["empty"][op] for op in r["empty"]}


def figures(r: dict) -> list[Figure]:
    """One row: the worst ratio, with every operation's milliseconds empty → full."""
    each = ratios(r)
    worst = max(each, key=each.__getitem__)
    loaded: Loaded = r["load"]
    how = (
        f"median ms of each call, empty → {r['rows']:,} finished jobs ({loaded.ledger_rows:,} "
        f"ledger rows, {r['keys']} keys, 90 days; written in {loaded.seconds:.0f} s): "
        + "; ".join(
            f"{op} {r['empty'][op]:.1f} → {r['full'][op]:.1f} ({each[op]:.2f}x)" for op in each
        )
    )
    return [
        Figure(
            f"Cost at {r['rows']:,} jobs / empty",
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
