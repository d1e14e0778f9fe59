"""The credit ledger's invariants under random grant/reserve/commit/release/expire sequences.

Runs the real SQL layer (services.accounts.ledger on a migrated SQLite file) with an
injected clock, next to a small model of what the balance must be:

- the balance is never negative, and equals the model's (so expired grants and lapsed
  holds are never spendable, and spending takes the grant that expires first);
- an idempotency key is committed at most once (no double charge);
- the ledger adds up: entries sum to the balance and held credits, and every credit
  granted is available, held, spent or expired;
- nothing moves between accounts (entries, allocations and settlements stay in one account);
- each grant's running `used` count equals what its live allocations add up to;
- compaction (the sweep dropping old idempotency keys and fingerprints, and old released
  reservations) changes no balance: a compacted key is simply new again.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select, text
from sqlmodel import SQLModel

from services.accounts.db import MIGRATIONS, make_engine, migrate
from services.accounts.ledger import RESERVATIONS, Ledger, Outcome
from services.accounts.models import (
    AccessLogEntry,
    Account,
    AdminAuditEntry,
    ApiKey,
    CreditGrant,
    Erasure,
    LedgerEntry,
    PendingSignUp,
    Reservation,
    ReservationAllocation,
    RetainedFinancialRecord,
    SignUpSource,
)
from services.common.errors import ServiceError

HOLD = timedelta(seconds=300)
START = datetime(2030, 1, 1, tzinfo=UTC)
ACCOUNTS = ("a", "b")
KEYS = ("k0", "k1", "k2", "k3")
HASHES = ("h0", "h1")
TTLS = (30, 301, 3600, 86_400)
STEPS = (1, 29, 31, 299, 301, 3599, 86_400)
FINGERPRINT_TTLS = (3600, 86_400)
RELEASED_TTLS = (3600, 7 * 86_400)
ACCOUNTS_TABLES = {
    model.__tablename__
    for model in (
        Account,
        ApiKey,
        CreditGrant,
        Reservation,
        ReservationAllocation,
        LedgerEntry,
        AccessLogEntry,
        Erasure,
        RetainedFinancialRecord,
        AdminAuditEntry,
        PendingSignUp,
        SignUpSource,
    )
}


@dataclass
class ModelReservation:
    id: str
    request_hash: str
    amount: int
    state: str
    hold_expires_at: datetime
    takes: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelAccount:
    id: str
    grants: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    reservations: dict[str, ModelReservation] = field(default_factory=dict)
    # Settled reservations whose key the compaction dropped: they still count, under no key.
    forgotten: list[ModelReservation] = field(default_factory=list)

    def all(self) -> list[ModelReservation]:
        return [*self.reservations.values(), *self.forgotten]

    def live(self, now: datetime) -> list[ModelReservation]:
        """Reservations whose credits are taken: committed, or held and not lapsed."""
        return [r for r in self.all() if r.state == "committed" or (r.state == "held" and r.hold_expires_at > now)]

    def remaining(self, now: datetime) -> list[tuple[datetime, str, int]]:
        used: dict[str, int] = {}
        for reservation in self.live(now):
            for grant_id, take in reservation.takes.items():
                used[grant_id] = used.get(grant_id, 0) + take
        return sorted(
            (expires_at, grant_id, amount - used.get(grant_id, 0))
            for grant_id, (amount, expires_at) in self.grants.items()
            if expires_at > now
        )

    def available(self, now: datetime) -> int:
        return sum(left for _, _, left in self.remaining(now))

    def held(self, now: datetime) -> int:
        return sum(r.amount for r in self.live(now) if r.state == "held")

    def committed(self) -> int:
        return sum(r.amount for r in self.all() if r.state == "committed")


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """One migrated database, copied for every example (migrating each time would be slow)."""
    path = tmp_path_factory.mktemp("ledger") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


class LedgerMachine(RuleBasedStateMachine):
    template: Path
    workdir: Path

    @initialize()
    def start(self) -> None:
        path = self.workdir / f"{uuid.uuid4()}.db"
        shutil.copy(self.template, path)
        self.engine = make_engine(f"sqlite:///{path}")
        self.now = START
        self.ledger = Ledger(self.engine, hold_timeout=HOLD, clock=lambda: self.now)
        self.model: dict[str, ModelAccount] = {}
        with self.engine.begin() as connection:
            for name in ACCOUNTS:
                account_id = str(uuid.uuid4())
                connection.execute(
                    Account.__table__.insert().values(  # type: ignore[attr-defined]
                        id=account_id,
                        email=f"{name}@example.com",
                        display_name=name,
                        password_hash="scrypt$1$1$1$x$y",
                        region="eu",
                        plan="free",
                        age_confirmed=True,
                        marketing_opt_in=False,
                        created_at=START,
                    )
                )
                self.model[name] = ModelAccount(account_id)

    def teardown(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()

    # -- operations ------------------------------------------------------------------

    @rule(name=st.sampled_from(ACCOUNTS), amount=st.integers(1, 5), ttl=st.sampled_from(TTLS))
    def grant(self, name: str, amount: int, ttl: int) -> None:
        account = self.model[name]
        expires_at = self.now + timedelta(seconds=ttl)
        grant_id = self.ledger.grant(account.id, amount, "admin", expires_at)
        account.grants[grant_id] = (amount, expires_at)

    @rule(
        name=st.sampled_from(ACCOUNTS),
        key=st.sampled_from(KEYS),
        amount=st.integers(1, 4),
        request_hash=st.sampled_from(HASHES),
    )
    def reserve(self, name: str, key: str, amount: int, request_hash: str) -> None:
        account = self.model[name]
        existing = account.reservations.get(key)
        try:
            reserved = self.ledger.reserve(account.id, key, amount, request_hash)
        except ServiceError as error:
            if existing is not None and existing.request_hash != request_hash:
                assert error.code == grpc.StatusCode.INVALID_ARGUMENT
                return
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "INSUFFICIENT_CREDITS"
            assert account.available(self.now) < amount, "refused although the credits were there"
            return
        assert existing is None or existing.request_hash == request_hash, "a reused key was accepted"
        if existing is not None and existing.state == "committed":
            assert reserved.outcome == Outcome.DUPLICATE_COMMITTED
            return
        if existing is not None and existing.state == "held" and existing.hold_expires_at > self.now:
            assert reserved.outcome == Outcome.DUPLICATE_HELD
            return
        assert account.available(self.now) >= amount, "held credits that were not there"
        expected = Outcome.NEW if existing is None else Outcome.DUPLICATE_RELEASED
        assert reserved.outcome == expected
        takes, left = {}, amount
        for _, grant_id, remaining in account.remaining(self.now):  # earliest expiry first
            take = min(left, remaining)
            if take > 0:
                takes[grant_id] = take
                left -= take
        account.reservations[key] = ModelReservation(
            reserved.reservation_id, request_hash, amount, "held", self.now + HOLD, takes
        )

    @rule(name=st.sampled_from(ACCOUNTS), key=st.sampled_from(KEYS))
    def commit(self, name: str, key: str) -> None:
        account = self.model[name]
        reservation = account.reservations.get(key)
        if reservation is None:
            return
        lapsed = reservation.state == "held" and reservation.hold_expires_at <= self.now
        try:
            state = self.ledger.commit(account.id, reservation.id)
        except ServiceError as error:
            assert error.code == grpc.StatusCode.FAILED_PRECONDITION
            assert reservation.state == "released" or lapsed
            reservation.state = "released"
            return
        assert state == "committed" and not lapsed and reservation.state in ("held", "committed")
        reservation.state = "committed"

    @rule(name=st.sampled_from(ACCOUNTS), key=st.sampled_from(KEYS))
    def release(self, name: str, key: str) -> None:
        account = self.model[name]
        reservation = account.reservations.get(key)
        if reservation is None:
            return
        try:
            state = self.ledger.release(account.id, reservation.id)
        except ServiceError as error:
            assert error.code == grpc.StatusCode.FAILED_PRECONDITION and reservation.state == "committed"
            return
        assert state == "released" and reservation.state != "committed"
        reservation.state = "released"

    @rule(key=st.sampled_from(KEYS), commit=st.booleans())
    def settle_with_another_account(self, key: str, commit: bool) -> None:
        """Account b names a reservation of account a: not found, nothing changes."""
        reservation = self.model["a"].reservations.get(key)
        if reservation is None:
            return
        with pytest.raises(ServiceError) as caught:
            (self.ledger.commit if commit else self.ledger.release)(self.model["b"].id, reservation.id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

    @rule(seconds=st.sampled_from(STEPS))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        self.ledger.sweep()

    @rule(fingerprint_ttl=st.sampled_from(FINGERPRINT_TTLS), released_ttl=st.sampled_from(RELEASED_TTLS))
    def compact(self, fingerprint_ttl: int, released_ttl: int) -> None:
        """The accounts sweep: settle, then drop old keys and fingerprints, and old released rows."""
        self.ledger.sweep()
        self.ledger.compact(timedelta(seconds=fingerprint_ttl), timedelta(seconds=released_ttl))
        stale = self.now - timedelta(seconds=fingerprint_ttl) + HOLD
        for account in self.model.values():
            for key, reservation in list(account.reservations.items()):
                if reservation.state == "held" and reservation.hold_expires_at <= self.now:
                    reservation.state = "released"  # the sweep released the lapsed hold
                if reservation.state != "held" and reservation.hold_expires_at <= stale:
                    account.forgotten.append(account.reservations.pop(key))
        table = Reservation.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as connection:
            kept = connection.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.state != "held", table.c.request_hash != "", table.c.hold_expires_at <= stale)
            ).scalar_one()
        assert kept == 0, "a settled reservation kept its fingerprint past its lifetime"

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def balances_match_the_model_and_the_ledger_adds_up(self) -> None:
        if not hasattr(self, "engine"):
            return
        for account in self.model.values():
            shown = self.ledger.balance(account.id)  # settles first: lapsed holds, expired grants
            assert shown.available >= 0 and shown.held >= 0
            assert shown.available == account.available(self.now)
            assert shown.held == account.held(self.now)
            with self.engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT kind, amount, held, reservation_id FROM ledger_entries WHERE account_id = :a"),
                    {"a": account.id},
                ).all()
            assert sum(r.amount for r in rows) == shown.available
            assert sum(r.held for r in rows) == shown.held
            granted = sum(r.amount for r in rows if r.kind == "grant")
            spent = -sum(r.held for r in rows if r.kind == "commit")
            expired = -sum(r.amount for r in rows if r.kind == "expire")
            assert granted == sum(amount for amount, _ in account.grants.values())
            assert granted == shown.available + shown.held + spent + expired
            assert spent == account.committed(), "charged more (or less) than the committed requests"
            commits = [r.reservation_id for r in rows if r.kind == "commit"]
            assert len(commits) == len(set(commits)), "a reservation was committed twice"

    @invariant()
    def nothing_crosses_accounts(self) -> None:
        if not hasattr(self, "engine"):
            return
        with self.engine.connect() as connection:
            crossing = connection.execute(
                text(
                    """
                    SELECT count(*) FROM ledger_entries e
                    LEFT JOIN reservations r ON r.id = e.reservation_id
                    LEFT JOIN credit_grants g ON g.id = e.grant_id
                    WHERE (r.id IS NOT NULL AND r.account_id != e.account_id)
                       OR (g.id IS NOT NULL AND g.account_id != e.account_id)
                    """
                )
            ).scalar_one()
            crossing += connection.execute(
                text(
                    """
                    SELECT count(*) FROM reservation_allocations a
                    JOIN reservations r ON r.id = a.reservation_id
                    JOIN credit_grants g ON g.id = a.grant_id
                    WHERE r.account_id != g.account_id
                    """
                )
            ).scalar_one()
        assert crossing == 0

    @invariant()
    def each_grant_counts_what_live_reservations_took(self) -> None:
        if not hasattr(self, "engine"):
            return
        with self.engine.connect() as connection:
            disagreeing = connection.execute(text(f"SELECT count(*) FROM credit_grants g WHERE {USED_DISAGREES}"))
            assert disagreeing.scalar_one() == 0


# A grant whose `used` is not the sum of its allocations to held or committed reservations.
USED_DISAGREES = """
    g.used != (
        SELECT coalesce(sum(a.amount), 0) FROM reservation_allocations a
        JOIN reservations r ON r.id = a.reservation_id
        WHERE a.grant_id = g.id AND r.state IN ('held', 'committed')
    )
"""


def test_ledger_invariants_hold_for_random_sequences(template_db: Path, tmp_path: Path) -> None:
    LedgerMachine.template = template_db
    LedgerMachine.workdir = tmp_path
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


def test_expired_grants_are_not_spendable_and_the_earliest_expiry_is_spent_first(template_db, tmp_path) -> None:
    path = tmp_path / "ledger.db"
    shutil.copy(template_db, path)
    engine = make_engine(f"sqlite:///{path}")
    now = [START]
    ledger = Ledger(engine, hold_timeout=HOLD, clock=lambda: now[0])
    with engine.begin() as connection:
        connection.execute(
            Account.__table__.insert().values(  # type: ignore[attr-defined]
                id="acc",
                email="e@example.com",
                password_hash="-",
                region="eu",
                plan="free",
                age_confirmed=True,
                marketing_opt_in=False,
                display_name="",
                created_at=START,
            )
        )
    late = ledger.grant("acc", 5, "purchase", START + timedelta(days=30))
    soon = ledger.grant("acc", 3, "signup", START + timedelta(days=1))
    ledger.commit("acc", ledger.reserve("acc", "r1", 2, "h").reservation_id)  # from `soon`
    assert ledger.balance("acc").next_expiry == START + timedelta(days=1)
    assert ledger.balance("acc").expiring_next == 1

    now[0] = START + timedelta(days=2)  # `soon` expired with 1 credit left
    assert ledger.balance("acc").available == 5
    with pytest.raises(ServiceError) as caught:
        ledger.reserve("acc", "r2", 6, "h")
    assert caught.value.reason == "INSUFFICIENT_CREDITS"
    entries, _ = ledger.entries("acc")
    expire = [entry for entry, _ in entries if entry.kind == "expire"]
    assert [(e.grant_id, e.amount) for e in expire] == [(soon, -1)]

    now[0] = START + timedelta(days=31)
    assert ledger.balance("acc").available == 0
    assert ledger.sweep() == 0, "the balance read already wrote the expiry off"
    entries, _ = ledger.entries("acc")
    assert next((e.grant_id, e.amount) for e, _ in entries if e.kind == "expire") == (late, -5)
    assert sum(e.amount for e, _ in entries) == 0
    engine.dispose()


def test_a_hold_nobody_commits_is_released_by_the_sweep(template_db, tmp_path) -> None:
    path = tmp_path / "ledger.db"
    shutil.copy(template_db, path)
    engine = make_engine(f"sqlite:///{path}")
    now = [START]
    ledger = Ledger(engine, hold_timeout=HOLD, clock=lambda: now[0])
    with engine.begin() as connection:
        connection.execute(
            Account.__table__.insert().values(  # type: ignore[attr-defined]
                id="acc",
                email="e@example.com",
                password_hash="-",
                region="eu",
                plan="free",
                age_confirmed=True,
                marketing_opt_in=False,
                display_name="",
                created_at=START,
            )
        )
    ledger.grant("acc", 2, "admin", START + timedelta(days=1))
    held = ledger.reserve("acc", "r1", 2, "h")
    now[0] += HOLD + timedelta(seconds=1)
    assert ledger.sweep() == 1
    with pytest.raises(ServiceError) as caught:
        ledger.commit("acc", held.reservation_id)
    assert caught.value.reason == "RESERVATION_RELEASED"
    assert ledger.balance("acc").available == 2
    assert ledger.reserve("acc", "r1", 2, "h").outcome == Outcome.DUPLICATE_RELEASED
    engine.dispose()


def test_a_commit_whose_result_was_not_handed_over_is_refunded_once(template_db, tmp_path) -> None:
    path = tmp_path / "ledger.db"
    shutil.copy(template_db, path)
    engine = make_engine(f"sqlite:///{path}")
    ledger = Ledger(engine, hold_timeout=HOLD, clock=lambda: START)
    with engine.begin() as connection:
        connection.execute(
            Account.__table__.insert().values(  # type: ignore[attr-defined]
                id="acc",
                email="e@example.com",
                password_hash="-",
                region="eu",
                plan="free",
                age_confirmed=True,
                marketing_opt_in=False,
                display_name="",
                created_at=START,
            )
        )
    ledger.grant("acc", 3, "admin", START + timedelta(days=1))
    held = ledger.reserve("acc", "r1", 2, "h")
    ledger.commit("acc", held.reservation_id)
    with pytest.raises(ServiceError) as caught:  # a plain release never undoes a charge
        ledger.release("acc", held.reservation_id)
    assert caught.value.reason == "RESERVATION_COMMITTED"
    assert ledger.release("acc", held.reservation_id, undelivered=True) == "released"
    assert ledger.release("acc", held.reservation_id, undelivered=True) == "released"  # idempotent
    assert (ledger.balance("acc").available, ledger.balance("acc").held) == (3, 0)
    entries, balance = ledger.entries("acc")
    kinds = [row.kind for row, _ in reversed(entries)]
    assert kinds == ["grant", "reserve", "commit", "refund"]
    assert sum(row.amount for row, _ in entries) == balance.available
    assert ledger.reserve("acc", "r1", 2, "h").outcome == Outcome.DUPLICATE_RELEASED  # a retry is charged anew
    engine.dispose()


@pytest.mark.parametrize(
    ("key", "amount", "field"), [("k" * 201, 1, "idempotency_key"), ("", 1, "idempotency_key"), ("k", 0, "amount")]
)
def test_impossible_reservations_are_refused_with_a_reason_and_write_nothing(
    template_db, tmp_path, key: str, amount: int, field: str
) -> None:
    path = tmp_path / "ledger.db"
    shutil.copy(template_db, path)
    engine = make_engine(f"sqlite:///{path}")
    ledger = Ledger(engine, hold_timeout=HOLD, clock=lambda: START)
    with pytest.raises(ServiceError) as caught:
        ledger.reserve("acc", key, amount, "h")
    assert (caught.value.code, caught.value.reason, caught.value.field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field,
    )
    with engine.connect() as db:
        assert db.execute(select(func.count()).select_from(RESERVATIONS)).scalar() == 0


def test_migrate_command_creates_the_schema_and_is_idempotent(tmp_path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {"CUTOUT_ACCOUNTS_DATABASE_URL": url, "PATH": ""}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "services.accounts", "migrate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    with engine.connect() as connection:
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    engine.dispose()


def test_the_migrations_build_exactly_the_tables_of_the_models(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    migrate(engine)
    with engine.connect() as connection:
        # Other services' tables share SQLModel's metadata once their models are imported.
        context = MigrationContext.configure(connection, opts={"include_object": _of_accounts})
        drift = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert drift == []


def _of_accounts(item: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
    return kind != "table" or name in ACCOUNTS_TABLES


def test_migration_0002_counts_what_existing_reservations_took(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                """
                INSERT INTO accounts VALUES ('acc', 'e@example.com', '', '-', 'eu', 'free', 1, 0, '2030-01-01');
                """
            )
        )
        connection.execute(
            text("INSERT INTO credit_grants VALUES (:id, 'acc', 10, 'admin', '2030-02-01', '2030-01-01')"),
            [{"id": "g1"}, {"id": "g2"}],
        )
        connection.execute(
            text("INSERT INTO reservations VALUES (:id, 'acc', :id, 'h', :n, :state, '2030-01-01', '2030-01-02')"),
            [
                {"id": "held", "n": 1, "state": "held"},
                {"id": "committed", "n": 2, "state": "committed"},
                {"id": "released", "n": 4, "state": "released"},
            ],
        )
        connection.execute(
            text("INSERT INTO reservation_allocations VALUES (:r, :g, :n)"),
            [
                {"r": "held", "g": "g1", "n": 1},
                {"r": "committed", "g": "g1", "n": 1},
                {"r": "committed", "g": "g2", "n": 1},
                {"r": "released", "g": "g2", "n": 4},
            ],
        )
    migrate(engine, "0002")  # (0003_units then counts in millicredits: tests/mesh/test_units.py)
    with engine.connect() as connection:
        used = dict(connection.execute(text("SELECT id, used FROM credit_grants")).all())
        disagreeing = connection.execute(text(f"SELECT count(*) FROM credit_grants g WHERE {USED_DISAGREES}"))
        assert disagreeing.scalar_one() == 0
    engine.dispose()
    assert used == {"g1": 2, "g2": 1}
