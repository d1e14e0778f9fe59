"""The tables. Times are timezone-aware UTC. Changes go through a migration in migrations/versions/."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Integer, String, UniqueConstraint
from sqlmodel import Field, SQLModel


class Account(SQLModel, table=True):
    __tablename__ = "accounts"

    id: str = Field(primary_key=True, max_length=36)
    email: str = Field(max_length=320, unique=True)  # normalised: NFKC, stripped, lower-case
    display_name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=200)  # scrypt$n$r$p$salt$hash, never the password
    region: str = Field(max_length=16)  # fixed at creation
    plan: str = Field(max_length=32)
    age_confirmed: bool
    marketing_opt_in: bool = False
    created_at: datetime
    # Objection to usage statistics: the account's calls stay out of every metric.
    usage_stats_opt_out: bool = False
    # Restriction of processing: kept, but no image of it is processed.
    processing_restricted: bool = False
    # The secret request fingerprints are keyed with (HMAC-SHA256), so that a copy of the
    # reservations cannot be checked against a known photo; it goes with the account.
    fingerprint_key: str = Field(
        sa_column=Column(String(64), nullable=False, default=lambda: secrets.token_hex(32)),
        default_factory=lambda: secrets.token_hex(32),
    )


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=36)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=36)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True)  # sha256 hex of the key
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class CreditGrant(SQLModel, table=True):
    """Only `used` ever changes: the credits live (held or committed) reservations take from
    it, kept by the ledger under the account's lock, so that what is left is one subtraction."""

    __tablename__ = "credit_grants"
    __table_args__ = (Index("ix_credit_grants_account_expiry", "account_id", "expires_at"),)

    id: str = Field(primary_key=True, max_length=36)
    account_id: str = Field(foreign_key="accounts.id", max_length=36)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    source: str = Field(max_length=16)  # signup, purchase, admin
    expires_at: datetime
    created_at: datetime
    used: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class Reservation(SQLModel, table=True):
    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_reservations_account_key"),
        Index("ix_reservations_state_hold", "state", "hold_expires_at"),
        Index("ix_reservations_account_state_hold", "account_id", "state", "hold_expires_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    account_id: str = Field(foreign_key="accounts.id", max_length=36)
    # Once the reservation is settled and IDEMPOTENCY_HOURS old, the sweep compacts it: the
    # key becomes the reservation's own id and the hash "" (the fingerprint of the image
    # goes); the amounts stay for the ledger.
    idempotency_key: str = Field(max_length=200)
    # HMAC (the account's fingerprint_key) of the request's sha256; never the request itself.
    request_hash: str = Field(max_length=64)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: str = Field(max_length=16)  # held, committed, released
    created_at: datetime
    hold_expires_at: datetime
    # Free replays served for this key so far (each made again; REPLAYS_PER_KEY at most).
    replays: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # The result the committed call kept (retention's id), so a replay names the same one.
    kept_result_id: str = Field(default="", sa_column=Column(String(64), nullable=False, server_default=""))


class ReservationAllocation(SQLModel, table=True):
    """Which grants a live reservation takes its credits from (earliest expiry first)."""

    __tablename__ = "reservation_allocations"

    reservation_id: str = Field(foreign_key="reservations.id", primary_key=True, max_length=36)
    grant_id: str = Field(foreign_key="credit_grants.id", primary_key=True, index=True, max_length=36)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))


class LedgerEntry(SQLModel, table=True):
    """Append-only history. `amount` is the change of the available balance and `held`
    the change of the held credits, so that the entries of an account add up to its balance."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account_seq", "account_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", max_length=36)
    kind: str = Field(max_length=16)  # grant, reserve, commit, release, refund, expire
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    held: int = Field(sa_column=Column(BigInteger, nullable=False))
    reservation_id: str | None = Field(default=None, max_length=36)
    grant_id: str | None = Field(default=None, index=True, max_length=36)
    created_at: datetime


class AccessLogEntry(SQLModel, table=True):
    """Who read or changed an account's data in accounts (export, admin look-ups, corrections):
    the owner's own access log, with retention's. Deleted with the account."""

    __tablename__ = "account_access_log"
    __table_args__ = (Index("ix_account_access_log_account", "account_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    account_id: str = Field(max_length=36)
    actor: str = Field(max_length=80)  # owner, admin:<name>, system
    action: str = Field(max_length=32)


class Erasure(SQLModel, table=True):
    """The durable record of an account's erasure (a saga): written with the revocation of its
    keys, then retention is erased, then accounts' rows; a periodic job resumes what a crash
    interrupted. Holds the pseudonymous account id only, never an e-mail or a name."""

    __tablename__ = "erasures"

    id: str = Field(primary_key=True, max_length=36)
    account_id: str = Field(max_length=36, unique=True)
    requested_by: str = Field(max_length=80)  # owner, admin:<name>
    state: str = Field(max_length=16)  # pending, done
    requested_at: datetime
    retention_erased_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0


class RetainedFinancialRecord(SQLModel, table=True):
    """What must outlive an erased account: its purchases (amount, date), under a random
    pseudonym drawn at erasure, with no path back to the account, its e-mail or its name."""

    __tablename__ = "retained_financial_records"

    id: int | None = Field(default=None, primary_key=True)
    pseudonym: str = Field(max_length=36, index=True)
    kind: str = Field(max_length=16)  # purchase
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    occurred_at: datetime
    erased_at: datetime


class AdminAuditEntry(SQLModel, table=True):
    """Every admin call, allowed or refused: append-only (the database refuses UPDATE and
    DELETE on this table; see migration 0004_rights)."""

    __tablename__ = "admin_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    admin: str = Field(max_length=80)  # the named admin, or "unknown" for a refused token
    method: str = Field(max_length=64)  # GrantCredits, LookupAccount, DeleteAccount
    account_id: str = Field(default="", max_length=36)  # the target, when known (never an e-mail)
    outcome: str = Field(max_length=32)  # ok, or the status code
    source: str = Field(default="", max_length=64)  # the caller's address
    detail: str = Field(default="", max_length=200)  # e.g. an erasure's reason, a grant's amount


class PendingSignUp(SQLModel, table=True):
    """A sign-up waiting for its e-mail code; the account is made from it by VerifySignUp.
    Deleted then (with every other sign-up of the address), or by the sweep once expired
    (SIGNUP_CODE_HOURS). An address may have a few at once: a later sign-up (someone else's,
    say) never invalidates a code its owner already holds."""

    __tablename__ = "pending_signups"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, index=True)  # normalised, as Account.email
    display_name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=200)
    region: str = Field(max_length=16)
    marketing_opt_in: bool = False
    code_hash: str = Field(max_length=64)  # sha256 of the code sent; never the code
    # Decided at sign-up (the cap), in the ledger's unit (millicredits).
    free_millicredits: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime
    expires_at: datetime = Field(index=True)


class SignUpSource(SQLModel, table=True):
    """One sign-up from one source address (sha256 of it), for the cap on free grants;
    deleted once older than the cap's window (FREE_GRANT_WINDOW_H)."""

    __tablename__ = "signup_sources"
    __table_args__ = (Index("ix_signup_sources_source_at", "source_hash", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    source_hash: str = Field(max_length=64)
    at: datetime = Field(index=True)


class EmailChange(SQLModel, table=True):
    """A ChangeEmail waiting for the code sent to the new address: the e-mail changes only
    once its mailbox is proven. One per account (a newer request replaces it); deleted when
    done, with the account, or by the sweep once expired (SIGNUP_CODE_HOURS)."""

    __tablename__ = "email_changes"

    account_id: str = Field(primary_key=True, foreign_key="accounts.id", max_length=36)
    new_email: str = Field(max_length=320)  # normalised
    code_hash: str = Field(max_length=64)  # sha256 of the code sent; never the code
    created_at: datetime
    expires_at: datetime = Field(index=True)
