"""SQL engines and migrations for the services that keep state (accounts, retention).

SQLite for the embedded default, PostgreSQL when given a postgresql+psycopg:// URL;
each service's schema is managed by its own Alembic migrations (no alembic.ini).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import create_engine

from services.common.errors import ServiceError

log = logging.getLogger(__name__)


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # One connection per process: every transaction takes SQLite's write lock anyway
    # (BEGIN IMMEDIATE below), and threads queued on the pool are woken the moment it is
    # free, where SQLite's busy handler would poll with sleeps of 1 to 100 ms.
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
        pool_timeout=busy_timeout_s,
    )

    # SQLAlchemy's "serializable pysqlite" recipe: pysqlite's own deferred BEGIN would
    # let two transactions read the same row and both act on it, so it is switched
    # off and every transaction takes the write lock up front with BEGIN IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted and overwritten rows are zeroed on disk, not left in free pages: an erased
        # account's e-mail or wrapped key must not be recoverable from the file.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _alembic(engine: Engine, migrations: Path, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["engine"] = engine
    config.attributes["version_table"] = version_table
    return config


def migrate(engine: Engine, migrations: Path, *, version_table: str, revision: str = "head") -> None:
    """Brings the schema to `revision` with the Alembic scripts in `migrations`."""
    command.upgrade(_alembic(engine, migrations, version_table), revision)


def downgrade(engine: Engine, migrations: Path, *, version_table: str, revision: str) -> None:
    """Takes the schema back to `revision` (an operator's way back from a release)."""
    command.downgrade(_alembic(engine, migrations, version_table), revision)


def schema_is_current(engine: Engine, migrations: Path, *, version_table: str) -> bool:
    """True unless the database is behind this code's migrations (empty, or at an older revision).

    A revision this code does not know counts as current: in a rolling update the
    migration step runs first, and the pods still on the old code must stay ready
    (migrations only add, so the old code keeps working on the newer schema).
    """
    script = ScriptDirectory.from_config(_alembic(engine, migrations, version_table))
    with engine.connect() as connection:
        applied = set(MigrationContext.configure(connection, opts={"version_table": version_table}).get_current_heads())
    known = {revision.revision for revision in script.walk_revisions()}
    return bool(applied) and (applied == set(script.get_heads()) or not applied <= known)


def compact_sqlite(engine: Engine) -> None:
    """SQLite: folds the write-ahead log into the database file and empties it, so that no
    earlier version of a page (holding an erased row) survives in the -wal file. No-op
    elsewhere (PostgreSQL reclaims dead rows with VACUUM)."""
    if engine.dialect.name != "sqlite":
        return
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        connection.close()


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; everything stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def database_ready(engine: Engine, schema_current: Callable[[], bool] | None = None) -> bool:
    """True while the database answers a trivial query (health) and, if `schema_current`
    is given, once it says the migrations have run (checked until it first says so)."""

    def ping() -> None:
        # A raw DB-API connection: no BEGIN, so no SQLite write lock for a health probe.
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        finally:
            connection.close()

    def check() -> bool:
        ping()
        return schema_current is None or schema_current()

    try:
        return await asyncio.to_thread(check)
    except SQLAlchemyError:
        return False


class MigrationsApplied:
    """A readiness check for a service that does not migrate at start-up (Kubernetes runs
    the migration step as a Job): false until the schema is current, then true for good."""

    def __init__(self, engine: Engine, migrations: Path, *, version_table: str) -> None:
        self._engine, self._migrations, self._version_table = engine, migrations, version_table
        self._applied = False

    def __call__(self) -> bool:
        if not self._applied:
            self._applied = schema_is_current(self._engine, self._migrations, version_table=self._version_table)
        return self._applied


def database_errors(name: str) -> dict[type[BaseException], Callable[[Any], ServiceError]]:
    """The error boundary's mapping for a service's database: any SQLAlchemy error is
    UNAVAILABLE (DATABASE_UNAVAILABLE), logged by its type only (a database error's text
    can quote the parameters of its statement)."""

    def unavailable(error: SQLAlchemyError) -> ServiceError:
        log.error("database error %s", type(error).__name__)
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            f"the {name} database is unavailable; retry shortly",
            reason="DATABASE_UNAVAILABLE",
            retry_after_s=1.0,
        )

    return {SQLAlchemyError: unavailable}
