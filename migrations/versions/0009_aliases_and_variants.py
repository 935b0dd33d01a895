"""jobs and ledger rows record the alias a request named and the variant it got

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('alias', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('variant', sa.Text(), nullable=True))
    op.create_index('ix_jobs_alias', 'jobs', ['alias', 'created_at'], unique=False, postgresql_where=sa.text('alias IS NOT NULL'))
    op.add_column('usage_ledger', sa.Column('alias', sa.Text(), nullable=True))
    op.add_column('usage_ledger', sa.Column('variant', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('usage_ledger', 'variant')
    op.drop_column('usage_ledger', 'alias')
    op.drop_index('ix_jobs_alias', table_name='jobs', postgresql_where=sa.text('alias IS NOT NULL'))
    op.drop_column('jobs', 'variant')
    op.drop_column('jobs', 'alias')
