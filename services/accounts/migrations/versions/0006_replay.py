"""replays (#28): reservations count their free replays and name the result they kept;
request fingerprints are keyed with a per-account secret (accounts.fingerprint_key), and
the fingerprints already stored are keyed with it here.

Revision ID: 0006_replay
Revises: 0004_rights
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006_replay"
down_revision = "0004_rights"
branch_labels = None
depends_on = None


def keyed(key_hex: str, request_hash: str) -> str:
    """As services.accounts.ledger.keyed_fingerprint (kept here: a migration does not change)."""
    return hmac.new(bytes.fromhex(key_hex), request_hash.encode(), hashlib.sha256).hexdigest()


def upgrade() -> None:
    # Plain ADD COLUMN with constant defaults (valid on SQLite without rebuilding tables
    # that foreign keys point at); each account's key is drawn below.
    op.add_column("accounts", sa.Column("fingerprint_key", sa.String(length=64), nullable=False, server_default=""))
    op.add_column("reservations", sa.Column("replays", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("reservations", sa.Column("kept_result_id", sa.String(length=64), nullable=False, server_default=""))
    db = op.get_bind()
    accounts = sa.table("accounts", sa.column("id", sa.String), sa.column("fingerprint_key", sa.String))
    reservations = sa.table(
        "reservations",
        sa.column("id", sa.String),
        sa.column("account_id", sa.String),
        sa.column("request_hash", sa.String),
    )
    for (account_id,) in db.execute(sa.select(accounts.c.id)).all():
        key = secrets.token_hex(32)
        db.execute(sa.update(accounts).where(accounts.c.id == account_id).values(fingerprint_key=key))
        rows = db.execute(
            sa.select(reservations.c.id, reservations.c.request_hash).where(
                reservations.c.account_id == account_id, reservations.c.request_hash != ""
            )
        ).all()
        for reservation_id, request_hash in rows:
            db.execute(
                sa.update(reservations)
                .where(reservations.c.id == reservation_id)
                .values(request_hash=keyed(key, request_hash))
            )


def downgrade() -> None:
    # The keyed fingerprints cannot be turned back into sha256s: they are dropped (compacted).
    db = op.get_bind()
    reservations = sa.table("reservations", sa.column("request_hash", sa.String))
    db.execute(sa.update(reservations).values(request_hash=""))
    # Plain DROP COLUMN (SQLite 3.35+): a batch rebuild would break the foreign keys.
    op.drop_column("reservations", "kept_result_id")
    op.drop_column("reservations", "replays")
    op.drop_column("accounts", "fingerprint_key")
