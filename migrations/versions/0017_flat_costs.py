"""flat costs as work grows: the daily usage rollup kept by triggers on the ledger, a key's
job pages by status and by model, and retention's pruned jobs

Revision ID: 0017
Revises: 0016
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

SHARDS = 8  # rows per (key, day, model): concurrent writers add to different ones

# Adds (sign 1) or subtracts (sign -1) ledger rows, summed per key, UTC day and model, to
# this connection's shard. Groups are written in key order, so two statements never lock
# the same rows in opposite orders.
ADD_FUNCTION = f"""
CREATE FUNCTION usage_daily_add(sign integer, entries usage_ledger[]) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO usage_daily AS u (api_key_id, day, model, shard, jobs, cached_jobs,
                                prompt_tokens, completion_tokens, cost_usd, gpu_cost_usd)
  SELECT e.api_key_id, (e.created_at AT TIME ZONE 'UTC')::date, e.model,
         pg_backend_pid() % {SHARDS},
         sign * count(*), sign * count(*) FILTER (WHERE e.cached),
         sign * sum(e.prompt_tokens), sign * sum(e.completion_tokens),
         sign * sum(e.cost_usd), sign * sum(e.gpu_cost_usd)
  FROM unnest(entries) AS e
  GROUP BY 1, 2, 3
  ORDER BY 1, 2, 3
  ON CONFLICT (api_key_id, day, model, shard) DO UPDATE SET
    jobs = u.jobs + excluded.jobs,
    cached_jobs = u.cached_jobs + excluded.cached_jobs,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    cost_usd = u.cost_usd + excluded.cost_usd,
    gpu_cost_usd = u.gpu_cost_usd + excluded.gpu_cost_usd
$$
"""

# One statement-level trigger per event (a trigger with transition tables has one event):
# a statement of a thousand ledger rows costs one upsert per group, not a thousand.
TRIGGER_FUNCTION = """
CREATE FUNCTION usage_daily_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM usage_daily;
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM usage_daily_add(-1, ARRAY(SELECT ROW(o.*)::usage_ledger FROM old_entries o));
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM usage_daily_add(1, ARRAY(SELECT ROW(n.*)::usage_ledger FROM new_entries n));
  END IF;
  RETURN NULL;
END
$$
"""

TRIGGERS = {
    'usage_daily_on_insert': 'AFTER INSERT ON usage_ledger REFERENCING NEW TABLE AS new_entries',
    'usage_daily_on_update': (
        'AFTER UPDATE ON usage_ledger REFERENCING OLD TABLE AS old_entries NEW TABLE AS new_entries'
    ),
    'usage_daily_on_delete': 'AFTER DELETE ON usage_ledger REFERENCING OLD TABLE AS old_entries',
    'usage_daily_on_truncate': 'AFTER TRUNCATE ON usage_ledger',
}

BACKFILL = """
INSERT INTO usage_daily (api_key_id, day, model, shard, jobs, cached_jobs, prompt_tokens,
                         completion_tokens, cost_usd, gpu_cost_usd)
SELECT api_key_id, (created_at AT TIME ZONE 'UTC')::date, model, 0, count(*),
       count(*) FILTER (WHERE cached), sum(prompt_tokens), sum(completion_tokens),
       sum(cost_usd), sum(gpu_cost_usd)
FROM usage_ledger
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.create_table('usage_daily',
    sa.Column('api_key_id', sa.UUID(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('shard', sa.SmallInteger(), nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('cached_jobs', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_usd', sa.Numeric(precision=24, scale=12), nullable=False),
    sa.Column('gpu_cost_usd', sa.Numeric(precision=24, scale=12), nullable=False),
    sa.PrimaryKeyConstraint('api_key_id', 'day', 'model', 'shard')
    )
    op.execute(ADD_FUNCTION)
    op.execute(TRIGGER_FUNCTION)
    # The triggers lock out ledger writes until this transaction commits: no row is written
    # between them and the backfill.
    for name, when in TRIGGERS.items():
        op.execute(f'CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_follow()')
    op.execute(BACKFILL)

    op.create_index(
        'ix_jobs_key_status_created', 'jobs',
        ['api_key_id', 'status', sa.text('created_at DESC'), sa.text('id DESC')], unique=False,
    )
    op.create_index(
        'ix_jobs_key_model_created', 'jobs',
        ['api_key_id', 'model', sa.text('created_at DESC'), sa.text('id DESC')], unique=False,
    )
    op.add_column('jobs', sa.Column('pruned_at', postgresql.TIMESTAMP(timezone=True), nullable=True))
    op.create_index(
        'ix_jobs_prunable', 'jobs', ['finished_at'], unique=False,
        postgresql_where=sa.text('pruned_at IS NULL AND finished_at IS NOT NULL'),
    )
    op.drop_constraint('ck_jobs_input', 'jobs', type_='check')
    op.create_check_constraint(
        'ck_jobs_input', 'jobs',
        'prompt IS NOT NULL OR messages IS NOT NULL OR pruned_at IS NOT NULL',
    )


def downgrade() -> None:
    op.drop_constraint('ck_jobs_input', 'jobs', type_='check')
    op.create_check_constraint('ck_jobs_input', 'jobs', 'prompt IS NOT NULL OR messages IS NOT NULL')
    op.drop_index('ix_jobs_prunable', table_name='jobs')
    op.drop_column('jobs', 'pruned_at')
    op.drop_index('ix_jobs_key_model_created', table_name='jobs')
    op.drop_index('ix_jobs_key_status_created', table_name='jobs')
    for name in TRIGGERS:
        op.execute(f'DROP TRIGGER {name} ON usage_ledger')
    op.execute('DROP FUNCTION usage_daily_follow()')
    op.execute('DROP FUNCTION usage_daily_add(integer, usage_ledger[])')
    op.drop_table('usage_daily')
