"""What is kept, and for how long (docs/privacy/retention.md): one test per line of the table that is not an
image, each with an injected clock, through the very sweep the services run
(`services.accounts.server.sweep_all`, `ResultStore.sweep`, `services.launcher.rotate_logs`),
on a migrated SQLite database and real folders."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlmodel
from sqlalchemy import func, select
from sqlmodel import Session

from services.accounts import credentials
from services.accounts.db import make_engine, migrate
from services.accounts.ledger import Ledger, Outcome
from services.accounts.mail import Outbox, latest_code, messages_to
from services.accounts.models import ApiKey, EmailChange, PendingSignUp, Reservation, SignUpSource
from services.accounts.server import sweep_all
from services.accounts.settings import AccountsSettings
from services.accounts.store import AccountStore
from services.common import credits
from services.common.errors import ServiceError
from services.common.sql import make_engine as make_sql_engine
from services.common.sql import migrate as migrate_sql
from services.launcher import rotate_logs
from services.retention import crypto
from services.retention.blobstore import LocalBlobStore
from services.retention.models import AccessLogEntry
from services.retention.server import MIGRATIONS, VERSION_TABLE
from services.retention.store import ResultStore

START = datetime(2030, 1, 1, tzinfo=UTC)
PASSWORD = "correct horse battery staple"
RESERVATIONS = Reservation.__table__  # type: ignore[attr-defined]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Cell:
    """Accounts' store, ledger and settings on a fresh database, as `build` wires them."""

    def __init__(self, tmp_path: Path, clock: Clock, **overrides: object) -> None:
        self.settings = AccountsSettings(
            database_url=f"sqlite:///{tmp_path / 'accounts.db'}",
            mail_outbox_dir=tmp_path / "outbox",
            scrypt_n=2**10,
            signup_credits=5,
            **overrides,
        )
        self.engine = make_engine(self.settings.database_url)
        migrate(self.engine)
        self.clock = clock
        self.ledger = Ledger(self.engine, hold_timeout=timedelta(seconds=self.settings.hold_timeout_s), clock=clock)
        self.store = AccountStore(
            self.engine,
            self.ledger,
            region=self.settings.region,
            region_endpoints=self.settings.region_endpoints,
            plan="free",
            scrypt_n=self.settings.scrypt_n,
            outbox=Outbox(self.settings.mail_outbox_dir),
            free_millicredits=credits.to_milli(self.settings.signup_credits),
            grants_per_source=self.settings.free_grants_per_source,
            grant_window=timedelta(hours=self.settings.free_grant_window_h),
            code_lifetime=timedelta(hours=self.settings.signup_code_hours),
            revoked_key_lifetime=timedelta(days=self.settings.revoked_key_days),
            mail_lifetime=timedelta(hours=self.settings.mail_outbox_hours),
            clock=clock,
        )

    def sweep(self) -> str:
        return sweep_all(self.ledger, self.store, self.settings)

    def sign_up(self, email: str, source: str = "192.0.2.1") -> None:
        self.store.sign_up(
            email=email,
            password=PASSWORD,
            display_name="",
            region="eu",
            age_confirmed=True,
            marketing_opt_in=False,
            source=source,
        )

    def account(self, email: str) -> tuple[str, str]:
        """A verified account: (account id, key id)."""
        self.sign_up(email)
        code = latest_code(self.settings.mail_outbox_dir, email)
        assert code is not None
        account, _, key = self.store.verify_sign_up(email, PASSWORD, code, "")
        return account.id, key.id

    def count(self, table: object, *where: object) -> int:
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cell(tmp_path: Path, clock: Clock) -> Cell:
    # e-mails are dated by their file time: the clock starts now for them.
    clock.now = datetime.now(UTC)
    return Cell(tmp_path, clock)


def test_fingerprints_and_idempotency_keys_go_after_idempotency_hours_and_no_balance_changes(cell, clock):
    account_id, _ = cell.account("fingerprint@example.com")
    reserved = cell.ledger.reserve(account_id, "key-1", 2, "sha256-of-image-and-options")
    cell.ledger.commit(account_id, reserved.reservation_id)
    before = cell.ledger.balance(account_id)
    hours = timedelta(hours=cell.settings.idempotency_hours)

    clock.advance(hours - timedelta(minutes=1))  # within its lifetime: kept, a retry is a replay
    cell.sweep()
    assert cell.ledger.reserve(account_id, "key-1", 2, "sha256-of-image-and-options").outcome == (
        Outcome.DUPLICATE_COMMITTED
    )
    clock.advance(timedelta(minutes=1) + timedelta(seconds=cell.settings.hold_timeout_s))
    assert "reservations compacted" in cell.sweep()

    assert cell.count(RESERVATIONS, RESERVATIONS.c.request_hash != "") == 0, "a fingerprint is left"
    assert cell.count(RESERVATIONS, RESERVATIONS.c.idempotency_key != RESERVATIONS.c.id) == 0, "a key is left"
    assert cell.count(RESERVATIONS, RESERVATIONS.c.id == reserved.reservation_id, RESERVATIONS.c.amount == 2) == 1
    after = cell.ledger.balance(account_id)
    assert (after.available, after.held) == (before.available, before.held)
    entries, _ = cell.ledger.entries(account_id)
    assert sum(entry.amount for entry, _ in entries) == after.available
    assert all(key == "" for _, key in entries)
    # The key is new again: the same request is a new charge.
    assert cell.ledger.reserve(account_id, "key-1", 2, "sha256-of-image-and-options").outcome == Outcome.NEW


def test_released_reservations_go_after_released_reservation_days(cell, clock):
    account_id, _ = cell.account("released@example.com")
    released = cell.ledger.reserve(account_id, "failed", 1, "h")
    cell.ledger.release(account_id, released.reservation_id)
    lapsed = cell.ledger.reserve(account_id, "lapsed", 1, "h")  # nobody commits it
    before = cell.ledger.balance(account_id)

    clock.advance(timedelta(days=cell.settings.released_reservation_days) - timedelta(hours=1))
    cell.sweep()
    assert cell.count(RESERVATIONS) == 2, "gone before their lifetime"
    clock.advance(timedelta(hours=1) + timedelta(seconds=cell.settings.hold_timeout_s))
    assert "released reservations deleted: 2" in cell.sweep()
    assert cell.count(RESERVATIONS) == 0
    assert cell.ledger.balance(account_id).available == before.available + 1  # the lapsed hold came back
    assert lapsed.reservation_id


def test_revoked_keys_go_after_revoked_key_days(cell, clock):
    account_id, key_id = cell.account("revoked@example.com")
    _, kept = cell.store.create_key(account_id, "kept")
    cell.store.revoke_key(account_id, key_id)
    clock.advance(timedelta(days=cell.settings.revoked_key_days) - timedelta(hours=1))
    cell.sweep()
    assert {key.id for key in cell.store.list_keys(account_id)} == {key_id, kept.id}
    clock.advance(timedelta(hours=1))
    assert "revoked keys: 1" in cell.sweep()
    assert {key.id for key in cell.store.list_keys(account_id)} == {kept.id}, "a live key went too"


def test_unverified_sign_ups_go_after_signup_code_hours(cell, clock):
    cell.sign_up("pending@example.com")
    code = latest_code(cell.settings.mail_outbox_dir, "pending@example.com")
    assert code is not None and cell.count(PendingSignUp.__table__) == 1  # type: ignore[attr-defined]
    clock.advance(timedelta(hours=cell.settings.signup_code_hours))
    assert "pending sign-ups: 1" in cell.sweep()
    assert cell.count(PendingSignUp.__table__) == 0  # type: ignore[attr-defined]
    with pytest.raises(ServiceError) as caught:
        cell.store.verify_sign_up("pending@example.com", PASSWORD, code, "")
    assert caught.value.reason == "VERIFICATION_FAILED"


def test_e_mail_changes_waiting_for_their_code_go_after_signup_code_hours(cell, clock):
    account_id, _ = cell.account("before@example.com")
    cell.store.request_email_change(account_id, "after@example.com")
    code = latest_code(cell.settings.mail_outbox_dir, "after@example.com")
    assert code is not None and cell.count(EmailChange.__table__) == 1  # type: ignore[attr-defined]
    clock.advance(timedelta(hours=cell.settings.signup_code_hours))
    assert "e-mail changes: 1" in cell.sweep()
    assert cell.count(EmailChange.__table__) == 0  # type: ignore[attr-defined]
    with pytest.raises(ServiceError) as caught:
        cell.store.confirm_email_change(account_id, "after@example.com", code)
    assert caught.value.reason == "VERIFICATION_FAILED"


def test_sign_up_sources_go_after_the_free_grant_window(cell, clock):
    cell.sign_up("source@example.com", source="198.51.100.7")
    table = SignUpSource.__table__  # type: ignore[attr-defined]
    with Session(cell.engine) as session:
        stored = session.exec(select(SignUpSource.source_hash)).all()  # type: ignore[call-overload]
    assert stored and "198.51.100.7" not in str(stored), "the address itself was stored"
    clock.advance(timedelta(hours=cell.settings.free_grant_window_h) - timedelta(minutes=1))
    cell.sweep()
    assert cell.count(table) == 1
    clock.advance(timedelta(minutes=1))
    assert "sign-up sources: 1" in cell.sweep()
    assert cell.count(table) == 0


def test_e_mails_in_the_outbox_go_after_mail_outbox_hours(cell, clock):
    cell.sign_up("mail@example.com")
    outbox = cell.settings.mail_outbox_dir
    assert len(messages_to(outbox, "mail@example.com")) == 1
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in outbox.glob("*.eml"))
    clock.advance(timedelta(hours=cell.settings.mail_outbox_hours) - timedelta(minutes=5))
    cell.sweep()
    assert len(messages_to(outbox, "mail@example.com")) == 1
    clock.advance(timedelta(minutes=10))
    assert "e-mails: 1" in cell.sweep()
    assert messages_to(outbox, "mail@example.com") == []


def test_access_log_lines_go_after_access_log_days(tmp_path, clock):
    engine = make_sql_engine(f"sqlite:///{tmp_path / 'retention.db'}")
    migrate_sql(engine, MIGRATIONS, version_table=VERSION_TABLE)
    master = crypto.MasterKeys.parse(f"k1:{base64.b64encode(os.urandom(32)).decode()}")
    days = 180
    store = ResultStore(
        engine, LocalBlobStore(tmp_path / "blobs"), master, clock=clock, access_log_lifetime=timedelta(days=days)
    )
    stored = store.store(
        "acc", b"not an image, just bytes", media_type="image/png", width=1, height=1, ttl=timedelta(days=1)
    )
    store.fetch_owned("acc", stored.result_id)
    clock.advance(timedelta(days=2))
    store.sweep()  # expires the result: a third line
    assert [line.action for line in store.access_log("acc")] == ["expire", "read", "store"]  # newest first
    clock.advance(timedelta(days=days) - timedelta(days=2))
    assert store.sweep().access_log == 2  # store and read are 180 days old; the expiry is not yet
    assert [line.action for line in store.access_log("acc")] == ["expire"]
    clock.advance(timedelta(days=2))
    assert store.sweep().access_log == 1
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(AccessLogEntry)).one() == (0,)  # type: ignore[call-overload]
    engine.dispose()


def test_service_logs_go_after_log_days(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    now = time.time()
    (run_dir / "accounts.log").write_text("first start\n")
    assert rotate_logs(run_dir, now, keep_days=14) == []
    rotated = list(run_dir.glob("accounts.log.*"))
    assert len(rotated) == 1 and not (run_dir / "accounts.log").exists()
    second_start = now + 14 * 86400 - 60
    (run_dir / "accounts.log").write_text("second start\n")
    os.utime(run_dir / "accounts.log", (second_start, second_start))  # written 14 days later
    assert rotate_logs(run_dir, second_start, keep_days=14) == []
    assert len(list(run_dir.glob("accounts.log.*"))) == 2
    deleted = rotate_logs(run_dir, now + 14 * 86400 + 60, keep_days=14)
    assert deleted == rotated, "only the log older than 14 days goes"


def test_credential_helpers_keep_nothing_in_clear(cell):
    """The sign-up code, like keys, is kept only as its sha256 (the e-mail carries it)."""
    cell.sign_up("clear@example.com")
    code = latest_code(cell.settings.mail_outbox_dir, "clear@example.com")
    with Session(cell.engine) as session:
        pending = session.exec(sqlmodel.select(PendingSignUp).where(PendingSignUp.email == "clear@example.com")).one()
    assert pending is not None and code is not None
    assert pending.code_hash == credentials.hash_api_key(code) and code not in pending.code_hash
    assert PASSWORD not in pending.password_hash
    with pytest.raises(ServiceError) as caught:
        cell.store.verify_sign_up("clear@example.com", PASSWORD, code + "x", "")
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert cell.count(ApiKey.__table__) == 0  # type: ignore[attr-defined]
