"""tenancy: key limits and budgets, job reservations, idempotency keys, webhook outbox

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

MONEY = sa.Numeric(precision=24, scale=12)


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('rpm', sa.Integer(), nullable=True))
    op.add_column('api_keys', sa.Column('tpm', sa.Integer(), nullable=True))
    op.add_column('api_keys', sa.Column('max_concurrent', sa.Integer(), nullable=True))
    op.add_column('api_keys', sa.Column('budget_usd', MONEY, nullable=True))
    op.add_column('api_keys', sa.Column('budget_period', sa.Text(), nullable=True))
    op.add_column('api_keys', sa.Column('webhook_url', sa.Text(), nullable=True))
    op.add_column('api_keys', sa.Column('webhook_secret_enc', sa.Text(), nullable=True))
    op.create_check_constraint('ck_api_keys_budget_period', 'api_keys', "budget_period IN ('day','month')")
    op.create_check_constraint('ck_api_keys_budget', 'api_keys', '(budget_usd IS NULL) = (budget_period IS NULL)')
    op.add_column('jobs', sa.Column('reserved_tokens', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('reserved_cost_usd', MONEY, nullable=True))
    op.create_table('idempotency_keys',
    sa.Column('api_key_id', sa.UUID(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('request_sha256', sa.Text(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('api_key_id', 'key')
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('api_key_id', sa.UUID(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('payload', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending','sending','delivered','failed')", name='ck_webhook_status'),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_deliveries_job_id', 'webhook_deliveries', ['job_id'], unique=False)
    op.create_index('ix_webhook_due', 'webhook_deliveries', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_table('webhook_attempts',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_attempts_delivery_id', 'webhook_attempts', ['delivery_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_webhook_attempts_delivery_id', table_name='webhook_attempts')
    op.drop_table('webhook_attempts')
    op.drop_index('ix_webhook_due', table_name='webhook_deliveries', postgresql_where=sa.text("status = 'pending'"))
    op.drop_index('ix_webhook_deliveries_job_id', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('idempotency_keys')
    op.drop_column('jobs', 'reserved_cost_usd')
    op.drop_column('jobs', 'reserved_tokens')
    op.drop_constraint('ck_api_keys_budget', 'api_keys', type_='check')
    op.drop_constraint('ck_api_keys_budget_period', 'api_keys', type_='check')
    for column in ('webhook_secret_enc', 'webhook_url', 'budget_period', 'budget_usd', 'max_concurrent', 'tpm', 'rpm'):
        op.drop_column('api_keys', column)
