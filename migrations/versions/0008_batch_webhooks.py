"""webhook deliveries of batch events: a delivery names a job or a batch

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=True)
    op.add_column('webhook_deliveries', sa.Column('batch_id', sa.Text(), nullable=True))
    op.create_foreign_key('webhook_deliveries_batch_id_fkey', 'webhook_deliveries', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')
    op.create_index('ix_webhook_deliveries_batch_id', 'webhook_deliveries', ['batch_id'], unique=False)
    op.create_check_constraint('ck_webhook_subject', 'webhook_deliveries', '(job_id IS NULL) <> (batch_id IS NULL)')


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE batch_id IS NOT NULL")
    op.drop_constraint('ck_webhook_subject', 'webhook_deliveries', type_='check')
    op.drop_index('ix_webhook_deliveries_batch_id', table_name='webhook_deliveries')
    op.drop_constraint('webhook_deliveries_batch_id_fkey', 'webhook_deliveries', type_='foreignkey')
    op.drop_column('webhook_deliveries', 'batch_id')
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=False)
