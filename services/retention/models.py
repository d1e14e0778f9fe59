"""Retention's tables (metadata only; the sealed bytes live in the blob store).

Times are timezone-aware UTC. Changes go through a migration in migrations/versions/.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary
from sqlmodel import Field, SQLModel


class AccountKey(SQLModel, table=True):
    """An account's key, wrapped by a master key. Deleting the row erases the account's results."""

    __tablename__ = "retention_account_keys"

    account_id: str = Field(primary_key=True, max_length=36)
    master_key_id: str = Field(max_length=64)
    wrapped_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime


class KeptResult(SQLModel, table=True):
    __tablename__ = "retention_results"
    __table_args__ = (
        Index("ix_retention_results_owner", "account_id", "created_at"),
        Index("ix_retention_results_expiry", "state", "expires_at"),
    )

    id: str = Field(primary_key=True, max_length=32)  # random, 128 bits, hex; also the blob's name
    account_id: str = Field(max_length=36)
    token_hash: str = Field(max_length=64, unique=True)  # sha256 of the capability token
    # "pending" while the blob is being written: never listed, never readable; the
    # sweep removes pending rows a crash left behind.
    state: str = Field(max_length=16)
    media_type: str = Field(max_length=64)
    width: int
    height: int
    size: int  # plaintext bytes
    wrapped_object_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime
    expires_at: datetime


class AccessLogEntry(SQLModel, table=True):
    """Who did what to whose result, when: append-only."""

    __tablename__ = "retention_access_log"
    __table_args__ = (Index("ix_retention_access_log_account", "account_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    account_id: str = Field(max_length=36)  # whose data
    actor: str = Field(max_length=16)  # owner, token (a holder of the link), system
    action: str = Field(max_length=16)  # store, read, delete, erase, expire
    result_id: str = Field(default="", max_length=32)


class Erasure(SQLModel, table=True):
    """An account's erasure, written with the destruction of its key: while `finished_at` is
    unset, the service finishes it (blobs, rows, access log) at start and in every sweep."""

    __tablename__ = "retention_erasures"

    account_id: str = Field(primary_key=True, max_length=36)
    requested_at: datetime
    finished_at: datetime | None = None
