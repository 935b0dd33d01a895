"""scaling events, and when a job's message was last published

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scaling_events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('from_replicas', sa.Integer(), nullable=False),
    sa.Column('to_replicas', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('waiting', sa.Integer(), nullable=False),
    sa.Column('in_flight', sa.Integer(), nullable=False),
    sa.Column('backend', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_scaling_events_model_created', 'scaling_events', ['model', 'created_at'], unique=False)
    op.add_column('jobs', sa.Column('published_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_jobs_queued_expires', 'jobs', ['expires_at'], unique=False, postgresql_where=sa.text("status = 'queued'"))


def downgrade() -> None:
    op.drop_index('ix_jobs_queued_expires', table_name='jobs', postgresql_where=sa.text("status = 'queued'"))
    op.drop_column('jobs', 'published_at')
    op.drop_index('ix_scaling_events_model_created', table_name='scaling_events')
    op.drop_table('scaling_events')
