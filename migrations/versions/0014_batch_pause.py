"""a batch can be paused: its queued lines wait in Postgres with no message

Revision ID: 0014
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('batches', sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('batches', 'paused_at')
