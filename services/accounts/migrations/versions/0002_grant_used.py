"""credit grants keep a running count of the credits taken from them; reservations
are indexed by account and state

Before this, what a grant had left was summed from all of its allocations on every
reservation, a cost that grew with the account's history.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("used", sa.BigInteger(), nullable=False, server_default="0"))
    # What live (held or committed) reservations have taken, as the old query summed it.
    op.execute(
        """
        UPDATE credit_grants SET used = (
            SELECT coalesce(sum(a.amount), 0)
            FROM reservation_allocations a JOIN reservations r ON r.id = a.reservation_id
            WHERE a.grant_id = credit_grants.id AND r.state IN ('held', 'committed')
        )
        """
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_account_state_hold", ["account_id", "state", "hold_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_account_state_hold")
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.drop_column("used")
