"""The Alembic environment every service's migrations/env.py runs (no alembic.ini).

services.common.sql.migrate passes the engine and the service's version table in the
Alembic config; the service's env.py imports its models first so their tables are on
the metadata.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            version_table=context.config.attributes["version_table"],
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
