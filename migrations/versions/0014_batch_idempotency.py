"""an Idempotency-Key on batch create remembers its batch: a key names jobs or a batch

Revision ID: 0014
Revises: 0013
"""

from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column('idempotency_keys', 'job_id', existing_type=sa.UUID(), nullable=True)
    op.add_column('idempotency_keys', sa.Column('batch_id', sa.Text(), nullable=True))
    op.create_foreign_key('idempotency_keys_batch_id_fkey', 'idempotency_keys', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')
    op.create_index('ix_idempotency_keys_batch_id', 'idempotency_keys', ['batch_id'], unique=False)
    op.create_check_constraint('ck_idempotency_subject', 'idempotency_keys', '(job_id IS NULL) <> (batch_id IS NULL)')


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE batch_id IS NOT NULL")
    op.drop_constraint('ck_idempotency_subject', 'idempotency_keys', type_='check')
    op.drop_index('ix_idempotency_keys_batch_id', table_name='idempotency_keys')
    op.drop_constraint('idempotency_keys_batch_id_fkey', 'idempotency_keys', type_='foreignkey')
    op.drop_column('idempotency_keys', 'batch_id')
    op.alter_column('idempotency_keys', 'job_id', existing_type=sa.UUID(), nullable=False)
