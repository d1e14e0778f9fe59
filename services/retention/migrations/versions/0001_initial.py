"""Retention's tables: account keys, kept results, access log.

Revision ID: retention_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "retention_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_account_keys",
        sa.Column("account_id", sa.String(36), primary_key=True),
        sa.Column("master_key_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "retention_results",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("wrapped_object_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_retention_results_owner", "retention_results", ["account_id", "created_at"])
    op.create_index("ix_retention_results_expiry", "retention_results", ["state", "expires_at"])
    op.create_table(
        "retention_access_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("result_id", sa.String(32), nullable=False, server_default=""),
    )
    op.create_index("ix_retention_access_log_account", "retention_access_log", ["account_id", "at"])


def downgrade() -> None:
    op.drop_table("retention_access_log")
    op.drop_table("retention_results")
    op.drop_table("retention_account_keys")
