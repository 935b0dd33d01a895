"""batches, and the batch and custom_id of a batch's jobs

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    statuses = "'validating','in_progress','finalizing','completed','failed','expired','cancelling','cancelled'"
    op.create_table('batches',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('api_key_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=False),
    sa.Column('input_file_id', sa.Text(), nullable=False),
    sa.Column('completion_window', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('errors', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('refused', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('total', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('output_file_id', sa.Text(), nullable=True),
    sa.Column('error_file_id', sa.Text(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('in_progress_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finalizing_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelling_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(f"status IN ({statuses})", name='ck_batches_status'),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_batches_key_created', 'batches', ['api_key_id', sa.literal_column('created_at DESC'), sa.literal_column('id DESC')], unique=False)
    op.create_index('ix_batches_open', 'batches', ['status'], unique=False, postgresql_where=sa.text("status IN ('in_progress','finalizing','cancelling')"))
    op.add_column('jobs', sa.Column('batch_id', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('custom_id', sa.Text(), nullable=True))
    op.create_foreign_key('jobs_batch_id_fkey', 'jobs', 'batches', ['batch_id'], ['id'], ondelete='RESTRICT')
    op.create_index('ix_jobs_batch', 'jobs', ['batch_id', 'status'], unique=False, postgresql_where=sa.text('batch_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_jobs_batch', table_name='jobs')
    op.drop_constraint('jobs_batch_id_fkey', 'jobs', type_='foreignkey')
    op.drop_column('jobs', 'custom_id')
    op.drop_column('jobs', 'batch_id')
    op.drop_index('ix_batches_open', table_name='batches')
    op.drop_index('ix_batches_key_created', table_name='batches')
    op.drop_table('batches')
