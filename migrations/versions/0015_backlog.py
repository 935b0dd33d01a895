"""the backlog: queued jobs held in Postgres until the feeder publishes them, and each key's
fair-share weight

Revision ID: 0015
Revises: 0014
"""

from alembic import op
import sqlalchemy as sa

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('in_backlog', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('api_keys', sa.Column('fair_share_weight', sa.Float(), server_default=sa.text('1'), nullable=False))
    op.create_check_constraint('ck_api_keys_fair_share_weight', 'api_keys', 'fair_share_weight > 0')
    op.create_index(
        'ix_jobs_backlog', 'jobs',
        ['model', 'api_key_id', sa.text('priority DESC'), 'expires_at', 'created_at'],
        unique=False, postgresql_where=sa.text("status = 'queued' AND in_backlog"),
    )
    op.create_index(
        'ix_jobs_backlog_interactive', 'jobs',
        ['model', 'api_key_id', sa.text('priority DESC'), 'expires_at', 'created_at'],
        unique=False,
        postgresql_where=sa.text("status = 'queued' AND in_backlog AND batch_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index('ix_jobs_backlog_interactive', table_name='jobs')
    op.drop_index('ix_jobs_backlog', table_name='jobs', postgresql_where=sa.text("status = 'queued' AND in_backlog"))
    op.drop_constraint('ck_api_keys_fair_share_weight', 'api_keys', type_='check')
    op.drop_column('api_keys', 'fair_share_weight')
    op.drop_column('jobs', 'in_backlog')
