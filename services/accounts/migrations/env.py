"""Alembic environment of accounts: the shared one, with its tables registered."""

from services.accounts import models  # noqa: F401  (registers the tables on the metadata)
from services.common.migrations_env import run_migrations

run_migrations()
