"""equal greedy lines of a batch run once: a follower job waits for its leader's answer

Revision ID: 0016
Revises: 0015
"""

from alembic import op
import sqlalchemy as sa

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("dedup_key", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("same_as", sa.UUID(), nullable=True))
    op.add_column(
        "jobs", sa.Column("leads", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.create_index(
        "ix_jobs_same_as",
        "jobs",
        ["same_as"],
        unique=False,
        postgresql_where=sa.text("status = 'queued' AND same_as IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_leads", "jobs", ["status"], unique=False, postgresql_where=sa.text("leads")
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_same_as",
        table_name="jobs",
        postgresql_where=sa.text("status = 'queued' AND same_as IS NOT NULL"),
    )
    op.drop_index("ix_jobs_leads", table_name="jobs", postgresql_where=sa.text("leads"))
    op.drop_column("jobs", "leads")
    op.drop_column("jobs", "same_as")
    op.drop_column("jobs", "dedup_key")
