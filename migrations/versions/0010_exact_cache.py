"""exact cache: a job's cache key, and whether the cache answered it (job and ledger row)

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cache_key', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('cached', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('usage_ledger', sa.Column('cached', sa.Boolean(), server_default=sa.text('false'), nullable=False))


def downgrade() -> None:
    op.drop_column('usage_ledger', 'cached')
    op.drop_column('jobs', 'cached')
    op.drop_column('jobs', 'cache_key')
