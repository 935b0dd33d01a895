"""a job the semantic cache answered records how similar its prompt was to the one answered

Revision ID: 0013
Revises: 0012
"""

from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cache_similarity', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'cache_similarity')
