"""a user's rights: restriction and objection flags, the owner's access log, durable
erasures, pseudonymous financial records, and the append-only admin audit log

Revision ID: 0004_rights
Revises: 0005_cells
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_rights"
down_revision = "0005_cells"
branch_labels = None
depends_on = None

APPEND_ONLY = "admin_audit is append-only"


def upgrade() -> None:
    # Plain ADD COLUMN (a constant default makes it valid on SQLite): a batch rebuild of
    # `accounts` would drop a table the other tables' foreign keys point at.
    op.add_column("accounts", sa.Column("usage_stats_opt_out", sa.Boolean(), nullable=False, server_default="0"))
    op.add_column("accounts", sa.Column("processing_restricted", sa.Boolean(), nullable=False, server_default="0"))
    op.create_table(
        "account_access_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_account_access_log_account", "account_access_log", ["account_id", "at"])
    op.create_table(
        "erasures",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("requested_by", sa.String(length=80), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retention_erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id"),
    )
    op.create_table(
        "retained_financial_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_retained_financial_records_pseudonym", "retained_financial_records", ["pseudonym"])
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("admin", sa.String(length=80), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Append-only, enforced by the database itself: the application only ever inserts,
    # and an UPDATE or DELETE (by the application or anyone with its credentials) fails.
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER admin_audit_no_{verb.lower()} BEFORE {verb} ON admin_audit "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION admin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER admin_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON admin_audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS admin_audit_no_update")
        op.execute("DROP TRIGGER IF EXISTS admin_audit_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS admin_audit_append_only ON admin_audit")
        op.execute("DROP FUNCTION IF EXISTS admin_audit_append_only()")
    op.drop_table("admin_audit")
    op.drop_index("ix_retained_financial_records_pseudonym", table_name="retained_financial_records")
    op.drop_table("retained_financial_records")
    op.drop_table("erasures")
    op.drop_index("ix_account_access_log_account", table_name="account_access_log")
    op.drop_table("account_access_log")
    for column in ("processing_restricted", "usage_stats_opt_out"):  # SQLite 3.35+ and PostgreSQL
        op.execute(f"ALTER TABLE accounts DROP COLUMN {column}")
