"""Migrations as a step of their own (Kubernetes runs `python -m services.<name> migrate`
as a Job before the Deployments roll): a service told not to migrate at start-up stays
NOT_SERVING until the schema is current, and becomes SERVING by itself once it is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.accounts import db as accounts_db
from services.common import sql
from services.launcher import ROOT, ServiceProcess
from services.retention import server as retention_server

SCHEMAS = {
    "accounts": (accounts_db.MIGRATIONS, accounts_db.VERSION_TABLE),
    "retention": (retention_server.MIGRATIONS, retention_server.VERSION_TABLE),
}


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_a_schema_is_current_only_once_every_migration_has_run(tmp_path: Path, service: str):
    migrations, version_table = SCHEMAS[service]
    engine = sql.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert not sql.schema_is_current(engine, migrations, version_table=version_table), "empty database"
        revisions = list(ScriptDirectory(str(migrations)).walk_revisions())  # newest first
        sql.migrate(engine, migrations, version_table=version_table, revision=revisions[-1].revision)
        behind = len(revisions) > 1
        assert sql.schema_is_current(engine, migrations, version_table=version_table) is not behind
        sql.migrate(engine, migrations, version_table=version_table)
        assert sql.schema_is_current(engine, migrations, version_table=version_table)
        # A newer release's migration step ran first: pods still on this code stay ready.
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE {version_table} SET version_num = 'from_a_newer_release'")
        assert sql.schema_is_current(engine, migrations, version_table=version_table)
    finally:
        engine.dispose()


def _status(process: ServiceProcess) -> int:
    with process.channel() as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service="cutout.v1.Accounts"), timeout=2)
                .status
            )
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN


def test_accounts_waits_for_the_migration_step_then_serves_by_itself(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    env = {"CUTOUT_ACCOUNTS_DATABASE_URL": url, "CUTOUT_ACCOUNTS_MIGRATE_ON_START": "false"}
    accounts = ServiceProcess("accounts", env, tmp_path)
    accounts.start()
    try:
        time.sleep(1.5)  # several health intervals (1 s) on an empty database
        assert _status(accounts) == health_pb2.HealthCheckResponse.NOT_SERVING

        step = subprocess.run(
            [sys.executable, "-m", "services.accounts", "migrate"],
            env={**os.environ, "CUTOUT_ACCOUNTS_DATABASE_URL": url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert step.returncode == 0, step.stderr

        deadline = time.monotonic() + 30
        while _status(accounts) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "accounts did not become SERVING after the migration step"
            time.sleep(0.2)
    finally:
        assert accounts.stop() == 0
