"""the ledger counts millicredits: every credit amount is multiplied by 1000

A preview priced at 0.25 credits needs a unit finer than a whole credit. Amounts stay
integers (exact, summable), now in thousandths of a credit; the API shows them as
decimals (services/common/credits.py). Every amount column of the ledger's tables is
scaled in the same transaction, so every sum and invariant of the ledger is unchanged
up to the factor.

Downgrading divides by 1000, and refuses while any amount is not whole credits (that
cannot be expressed in the old unit without losing or inventing credits).

Revision ID: 0003_units
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_units"
down_revision = "0002"
branch_labels = None
depends_on = None

MILLI = 1000
# Every column that holds an amount of credits.
AMOUNTS = {
    "credit_grants": ("amount", "used"),
    "reservations": ("amount",),
    "reservation_allocations": ("amount",),
    "ledger_entries": ("amount", "held"),
}


def upgrade() -> None:
    for table, columns in AMOUNTS.items():
        op.execute(f"UPDATE {table} SET " + ", ".join(f"{column} = {column} * {MILLI}" for column in columns))


def downgrade() -> None:
    connection = op.get_bind()
    for table, columns in AMOUNTS.items():
        fractional = " OR ".join(f"{column} % {MILLI} <> 0" for column in columns)
        count = connection.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {fractional}")).scalar_one()
        if count:
            raise RuntimeError(
                f"cannot downgrade: {count} rows of {table} hold fractions of a credit, "
                "which whole credits cannot express"
            )
    for table, columns in AMOUNTS.items():
        op.execute(f"UPDATE {table} SET " + ", ".join(f"{column} = {column} / {MILLI}" for column in columns))
