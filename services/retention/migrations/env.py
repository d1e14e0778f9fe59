"""Alembic environment of retention: the shared one, with its tables registered."""

from services.common.migrations_env import run_migrations
from services.retention import models  # noqa: F401  (registers the tables on the metadata)

run_migrations()
