"""The migrations at head build exactly the schema the SQLAlchemy models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from llmq.db import get_engine
from llmq.models import Base


def test_migrations_at_head_create_exactly_the_models(environment):
    """`environment` made this run's database from nothing with `alembic upgrade head`; what
    autogenerate would still write against it is drift between the models and the migrations."""
    with get_engine().connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
