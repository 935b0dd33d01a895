"""The scale bench's generator writes what it says: finished jobs of every key and model over
the days asked, a ledger row for each that succeeded, and the rollup follows (timings of
the figure itself are not judged here)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench import scale
from llmq.db import drop_database, ensure_database, migrate, session_scope
from llmq.keys import create_key
from tests.conftest import DATABASE_URL

ROWS = 5000


def test_the_generator_writes_the_rows_it_is_asked_for(environment):
    url = make_url(DATABASE_URL)
    url = url.set(database=f"{url.database}_scale").render_as_string(False)
    ensure_database(url)
    try:
        migrate(url)
        with session_scope(url) as session:
            keys = [create_key(session, f"scale-{i}")[0].id for i in range(3)]
        loaded = scale.load(url, ROWS, keys, days=30)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            jobs, ledger, failed, key_count, models, days = conn.execute(sa.text(
                "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM usage_ledger), "
                "(SELECT count(*) FROM jobs WHERE status = 'failed'), "
                "(SELECT count(DISTINCT api_key_id) FROM jobs), "
                "(SELECT count(DISTINCT model) FROM usage_ledger), "
                "(SELECT count(DISTINCT created_at::date) FROM usage_ledger)"
            )).one()  # fmt: skip
            rollup = conn.scalar(sa.text("SELECT sum(jobs) FROM usage_daily"))
        engine.dispose()
    finally:
        drop_database(url)
    assert jobs == loaded.jobs == ROWS
    assert failed == ROWS // scale.FAILED_EVERY and ledger == loaded.ledger_rows == ROWS - failed
    assert key_count == 3 and models == len(scale.MODELS) and days >= 30
    assert rollup == ledger
