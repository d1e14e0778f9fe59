"""Alembic environment: the engine comes from services.common.sql.migrate (no alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from services.accounts import models  # noqa: F401  (registers the tables on the metadata)

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
