"""ChangeEmail proves the new mailbox (#28): email_changes waits for the code sent to it; an
address may have several sign-ups waiting (pending_signups gets its own id), so that a later
sign-up never invalidates a code its owner holds.

Revision ID: 0007_email_change
Revises: 0006_replay
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_email_change"
down_revision = "0006_replay"
branch_labels = None
depends_on = None

COLUMNS = (
    "email, display_name, password_hash, region, marketing_opt_in, code_hash, free_millicredits, created_at, expires_at"
)


def _pending_signups(name: str, *, with_id: bool) -> None:
    key = [sa.Column("id", sa.Integer(), nullable=False)] if with_id else []
    op.create_table(
        name,
        *key,
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("marketing_opt_in", sa.Boolean(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("free_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id" if with_id else "email"),
    )


def upgrade() -> None:
    op.create_table(
        "email_changes",
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_index("ix_email_changes_expires_at", "email_changes", ["expires_at"])
    # A new table with its own id, the rows copied (nothing points at this table).
    op.drop_index("ix_pending_signups_expires_at", table_name="pending_signups")
    op.rename_table("pending_signups", "pending_signups_0006")
    _pending_signups("pending_signups", with_id=True)
    op.execute(f"INSERT INTO pending_signups ({COLUMNS}) SELECT {COLUMNS} FROM pending_signups_0006")
    op.drop_table("pending_signups_0006")
    op.create_index("ix_pending_signups_expires_at", "pending_signups", ["expires_at"])
    op.create_index("ix_pending_signups_email", "pending_signups", ["email"])


def downgrade() -> None:
    # One sign-up per address again: the newest of each address stays.
    op.drop_index("ix_pending_signups_email", table_name="pending_signups")
    op.drop_index("ix_pending_signups_expires_at", table_name="pending_signups")
    op.rename_table("pending_signups", "pending_signups_0007")
    _pending_signups("pending_signups", with_id=False)
    op.execute(
        f"INSERT INTO pending_signups ({COLUMNS}) SELECT {COLUMNS} FROM pending_signups_0007 AS p "
        "WHERE p.id = (SELECT MAX(q.id) FROM pending_signups_0007 AS q WHERE q.email = p.email)"
    )
    op.drop_table("pending_signups_0007")
    op.create_index("ix_pending_signups_expires_at", "pending_signups", ["expires_at"])
    op.drop_index("ix_email_changes_expires_at", table_name="email_changes")
    op.drop_table("email_changes")
