"""Accounts' database: the shared engine and migration helpers with accounts' own scripts."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from services.common import sql

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    return sql.make_engine(url, busy_timeout_s=busy_timeout_s)


def migrate(engine: Engine, revision: str = "head") -> None:
    sql.migrate(engine, MIGRATIONS, version_table=VERSION_TABLE, revision=revision)


def downgrade(engine: Engine, revision: str) -> None:
    sql.downgrade(engine, MIGRATIONS, version_table=VERSION_TABLE, revision=revision)
