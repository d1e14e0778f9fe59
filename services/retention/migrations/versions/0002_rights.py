"""durable erasures: the record written with the destruction of an account's key

Revision ID: 0002_rights
Revises: retention_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_rights"
down_revision = "retention_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_erasures",
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    op.drop_table("retention_erasures")
