"""sign-ups wait for an e-mail code (pending_signups); sign-up sources for the cap on free
grants (signup_sources). (Old reservations are compacted in place, no schema change.)

Revision ID: 0005_cells
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_cells"
down_revision = "0003_units"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_signups",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("marketing_opt_in", sa.Boolean(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("free_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email"),
    )
    op.create_index("ix_pending_signups_expires_at", "pending_signups", ["expires_at"])
    op.create_table(
        "signup_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signup_sources_source_at", "signup_sources", ["source_hash", "at"])
    op.create_index("ix_signup_sources_at", "signup_sources", ["at"])


def downgrade() -> None:
    op.drop_table("signup_sources")
    op.drop_table("pending_signups")
