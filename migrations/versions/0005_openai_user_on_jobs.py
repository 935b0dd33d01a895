"""jobs keep the end user an OpenAI-style request names (`user`)

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('user', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'user')
