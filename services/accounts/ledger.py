"""The credit ledger: grants, reservations (hold, commit, release), expiry, balance.

Synchronous (sqlmodel); the gRPC servicer calls it in a thread. Every write locks the
account first (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite every transaction is
BEGIN IMMEDIATE, see db.py), so concurrent reserves of one account run one at a time
and can never spend the same credit twice. Every operation is scoped to one account id:
a reservation or grant of another account is simply not found.

The ledger is append-only. Each entry carries `amount` (change of the available
balance) and `held` (change of the held credits):

    grant    +n  0     reserve  -n +n    commit   0 -n
    release  +n -n     expire   -left 0  (what an expired grant still had)

Before any write (and before the balance is read) the account is settled: holds past
their expiry are released and expired grants are written off, so the entries of an
account always add up to its balance and expired credits are never spendable.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from services.accounts.models import Account, CreditGrant, LedgerEntry, Reservation, ReservationAllocation
from services.common.errors import ServiceError
from services.common.sql import aware

HELD, COMMITTED, RELEASED = "held", "committed", "released"
GRANT_SOURCES = ("signup", "purchase", "admin")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Outcome(enum.Enum):
    NEW = "new"  # held now; the caller commits or releases it
    DUPLICATE_HELD = "duplicate_held"  # another call holds this key
    DUPLICATE_COMMITTED = "duplicate_committed"  # already charged
    DUPLICATE_RELEASED = "duplicate_released"  # an earlier try failed; held again now


@dataclass(frozen=True)
class Reserved:
    reservation_id: str
    outcome: Outcome

    @property
    def owned(self) -> bool:
        """True when the caller holds the credits and must commit or release them."""
        return self.outcome in (Outcome.NEW, Outcome.DUPLICATE_RELEASED)


@dataclass(frozen=True)
class BalanceView:
    available: int
    held: int
    next_expiry: datetime | None
    expiring_next: int


def insufficient_credits(available: int, wanted: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"not enough credits: this request costs {wanted} and {available} are available; "
        "buy credits or wait for requests in flight to finish",
        reason="INSUFFICIENT_CREDITS",
        quota_subject="credits",
        metadata={"available": str(available), "required": str(wanted)},
    )


class Ledger:
    def __init__(self, engine: Engine, *, hold_timeout: timedelta, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.hold_timeout = hold_timeout
        self.clock = clock

    # -- writes ---------------------------------------------------------------------

    def grant(self, account_id: str, amount: int, source: str, expires_at: datetime) -> str:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            return self.grant_in(session, account_id, amount, source, expires_at)

    def grant_in(self, session: Session, account_id: str, amount: int, source: str, expires_at: datetime) -> str:
        """A grant inside the caller's transaction (sign-up writes the account and its credits at once)."""
        if amount <= 0:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "amount must be a positive number of credits", field="amount"
            )
        if source not in GRANT_SOURCES:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, f"source must be one of {', '.join(GRANT_SOURCES)}", field="source"
            )
        now = self._lock_and_settle(session, account_id)
        if expires_at <= now:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "the grant would already be expired", field="expires_in_days"
            )
        grant = CreditGrant(
            id=_new_id(), account_id=account_id, amount=amount, source=source, expires_at=expires_at, created_at=now
        )
        session.add(grant)
        session.flush()
        self._entry(session, account_id, "grant", amount, 0, now, grant_id=grant.id)
        return grant.id

    def reserve(self, account_id: str, idempotency_key: str, amount: int, request_hash: str) -> Reserved:
        if amount <= 0:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "amount must be positive", field="amount")
        if not idempotency_key or len(idempotency_key) > 200:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "idempotency_key must be 1 to 200 characters",
                field="idempotency_key",
            )
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            # On the latency path of every removal: it frees lapsed holds (their credits
            # may be spent now) but leaves writing off expired grants to the next read or
            # sweep; it only ever spends unexpired grants, so the write-off cannot change it.
            now = self._lock_and_release_lapsed(session, account_id)
            reservation = session.exec(
                select(Reservation).where(
                    Reservation.account_id == account_id, Reservation.idempotency_key == idempotency_key
                )
            ).first()
            if reservation is not None:
                if reservation.request_hash != request_hash:
                    raise ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "idempotency key reused for a different request; use a new key for a new request",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        field="idempotency_key",
                    )
                if reservation.state == COMMITTED:
                    return Reserved(reservation.id, Outcome.DUPLICATE_COMMITTED)
                if reservation.state == HELD:  # settled above, so this hold is live
                    return Reserved(reservation.id, Outcome.DUPLICATE_HELD)
                # Released: the earlier try failed and was not charged; this retry is.
                for old in session.exec(
                    select(ReservationAllocation).where(ReservationAllocation.reservation_id == reservation.id)
                ):
                    session.delete(old)
                session.flush()
                reservation.amount = amount
                outcome = Outcome.DUPLICATE_RELEASED
            else:
                reservation = Reservation(
                    id=_new_id(),
                    account_id=account_id,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                    amount=amount,
                    state=HELD,
                    created_at=now,
                    hold_expires_at=now,
                )
                outcome = Outcome.NEW

            # Earliest expiry first, from what each unexpired grant has left.
            left = amount
            takes: list[tuple[str, int]] = []
            for grant_id, remaining in self._remaining_by_grant(session, account_id, now):
                if left == 0:
                    break
                take = min(left, remaining)
                if take > 0:
                    takes.append((grant_id, take))
                    left -= take
            if left > 0:
                raise insufficient_credits(amount - left, amount)  # the transaction rolls back

            reservation.state = HELD
            reservation.hold_expires_at = now + self.hold_timeout
            session.add(reservation)
            session.flush()
            for grant_id, take in takes:
                session.add(ReservationAllocation(reservation_id=reservation.id, grant_id=grant_id, amount=take))
            self._entry(session, account_id, "reserve", -amount, amount, now, reservation_id=reservation.id)
            return Reserved(reservation.id, outcome)

    def commit(self, account_id: str, reservation_id: str) -> str:
        # On the latency path of every removal, so it settles only what it touches:
        # its own hold, if that lapsed (committing never changes what grants hold).
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            self._lock(session, account_id)
            now = self.clock()
            reservation = self._reservation(session, account_id, reservation_id)
            if reservation.state == HELD and aware(reservation.hold_expires_at) <= now:
                self._release(session, reservation, now)
                self._expire_grants(session, account_id, now)
            if reservation.state == RELEASED:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the reservation was released (failed, or not committed in time); reserve again",
                    reason="RESERVATION_RELEASED",
                )
            if reservation.state == HELD:
                reservation.state = COMMITTED
                session.add(reservation)
                self._entry(session, account_id, "commit", 0, -reservation.amount, now, reservation_id=reservation.id)
            return reservation.state

    def release(self, account_id: str, reservation_id: str) -> str:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            now = self._lock_and_settle(session, account_id)
            reservation = self._reservation(session, account_id, reservation_id)
            if reservation.state == COMMITTED:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the reservation is already committed and cannot be released",
                    reason="RESERVATION_COMMITTED",
                )
            if reservation.state == HELD:
                self._release(session, reservation, now)
                # Credits that return to a grant which expired meanwhile expire now.
                self._expire_grants(session, account_id, now)
            return reservation.state

    def settle(self, account_id: str) -> None:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            self._lock_and_settle(session, account_id)

    def sweep(self) -> int:
        """Settles every account with a lapsed hold or an expired grant left; returns how many."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session:
            lapsed = session.exec(
                select(Reservation.account_id)
                .where(Reservation.state == HELD, Reservation.hold_expires_at <= now)
                .distinct()
            ).all()
            expired = {account_id for account_id, _, _ in _expired_leftovers(session, now)}
        accounts = sorted(set(lapsed) | expired)
        for account_id in accounts:
            self.settle(account_id)
        return len(accounts)

    # -- reads ----------------------------------------------------------------------

    def balance(self, account_id: str) -> BalanceView:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            now = self._lock_and_settle(session, account_id)
            return self._balance(session, account_id, now)

    def entries(self, account_id: str, limit: int = 100) -> tuple[list[tuple[LedgerEntry, str]], BalanceView]:
        """Newest first, each with its reservation's idempotency key (or "")."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            now = self._lock_and_settle(session, account_id)
            rows = session.exec(
                select(LedgerEntry, Reservation.idempotency_key)
                .join(Reservation, col(Reservation.id) == col(LedgerEntry.reservation_id), isouter=True)
                .where(LedgerEntry.account_id == account_id)
                .order_by(col(LedgerEntry.seq).desc())
                .limit(limit)
            ).all()
            return [(entry, key or "") for entry, key in rows], self._balance(session, account_id, now)

    # -- inside a transaction -------------------------------------------------------

    def _lock(self, session: Session, account_id: str) -> None:
        """Serialises this account's ledger transactions (row lock on PostgreSQL; SQLite locks at BEGIN)."""
        account = session.exec(select(Account).where(Account.id == account_id).with_for_update()).first()
        if account is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")

    def _lock_and_settle(self, session: Session, account_id: str) -> datetime:
        now = self._lock_and_release_lapsed(session, account_id)
        self._expire_grants(session, account_id, now)
        return now

    def _lock_and_release_lapsed(self, session: Session, account_id: str) -> datetime:
        self._lock(session, account_id)
        now = self.clock()
        for reservation in session.exec(
            select(Reservation).where(
                Reservation.account_id == account_id, Reservation.state == HELD, Reservation.hold_expires_at <= now
            )
        ):
            self._release(session, reservation, now)
        return now

    def _release(self, session: Session, reservation: Reservation, now: datetime) -> None:
        reservation.state = RELEASED
        session.add(reservation)
        self._entry(
            session, reservation.account_id, "release", reservation.amount, -reservation.amount, now, reservation.id
        )

    def _expire_grants(self, session: Session, account_id: str, now: datetime) -> None:
        session.flush()
        for _, grant_id, leftover in _expired_leftovers(session, now, account_id):
            self._entry(session, account_id, "expire", -leftover, 0, now, grant_id=grant_id)

    def _remaining_by_grant(self, session: Session, account_id: str, now: datetime) -> list[tuple[str, int]]:
        """(grant id, credits left) of the unexpired grants, earliest expiry first."""
        used = _used_by_grant(account_id).subquery()
        rows = session.exec(
            select(CreditGrant.id, CreditGrant.amount - func.coalesce(used.c.used, 0))
            .join(used, used.c.grant_id == CreditGrant.id, isouter=True)
            .where(CreditGrant.account_id == account_id, CreditGrant.expires_at > now)
            .order_by(col(CreditGrant.expires_at), col(CreditGrant.created_at), col(CreditGrant.id))
        ).all()
        return [(grant_id, int(remaining)) for grant_id, remaining in rows]

    def _balance(self, session: Session, account_id: str, now: datetime) -> BalanceView:
        remaining = self._remaining_by_grant(session, account_id, now)
        held = session.exec(
            select(func.coalesce(func.sum(Reservation.amount), 0)).where(
                Reservation.account_id == account_id, Reservation.state == HELD
            )
        ).one()
        next_expiry, expiring = None, 0
        expiries = session.exec(
            select(CreditGrant.id, CreditGrant.expires_at).where(
                CreditGrant.account_id == account_id, CreditGrant.expires_at > now
            )
        ).all()
        left = dict(remaining)
        for grant_id, expires_at in sorted(expiries, key=lambda row: row[1]):
            if left.get(grant_id, 0) <= 0:
                continue
            if next_expiry is None:
                next_expiry = expires_at
            if expires_at == next_expiry:
                expiring += left[grant_id]
        return BalanceView(
            available=sum(r for _, r in remaining), held=int(held), next_expiry=next_expiry, expiring_next=expiring
        )

    def _reservation(self, session: Session, account_id: str, reservation_id: str) -> Reservation:
        reservation = session.exec(
            select(Reservation).where(Reservation.id == reservation_id, Reservation.account_id == account_id)
        ).first()
        if reservation is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such reservation", reason="RESERVATION_NOT_FOUND")
        return reservation

    def _entry(
        self,
        session: Session,
        account_id: str,
        kind: str,
        amount: int,
        held: int,
        now: datetime,
        reservation_id: str | None = None,
        grant_id: str | None = None,
    ) -> None:
        session.add(
            LedgerEntry(
                account_id=account_id,
                kind=kind,
                amount=amount,
                held=held,
                reservation_id=reservation_id,
                grant_id=grant_id,
                created_at=now,
            )
        )


def _used_by_grant(account_id: str | None = None):  # type: ignore[no-untyped-def]
    """Credits of each grant taken by live (held or committed) reservations, of one account
    if given (then only its reservations are read, not every account's)."""
    query = (
        select(
            ReservationAllocation.grant_id.label("grant_id"),  # type: ignore[attr-defined]
            func.sum(ReservationAllocation.amount).label("used"),
        )
        .join(Reservation, col(Reservation.id) == col(ReservationAllocation.reservation_id))
        .where(col(Reservation.state).in_([HELD, COMMITTED]))
        .group_by(col(ReservationAllocation.grant_id))
    )
    return query if account_id is None else query.where(Reservation.account_id == account_id)


def _expired_leftovers(session: Session, now: datetime, account_id: str | None = None) -> list[tuple[str, str, int]]:
    """(account id, grant id, credits) still unspent, unheld and not yet written off on expired grants."""
    used = _used_by_grant(account_id).subquery()
    written_off = (
        select(
            LedgerEntry.grant_id.label("grant_id"),  # type: ignore[union-attr]
            func.sum(-LedgerEntry.amount).label("gone"),
        )
        .where(LedgerEntry.kind == "expire")
        .group_by(col(LedgerEntry.grant_id))
        .subquery()
    )
    leftover = CreditGrant.amount - func.coalesce(used.c.used, 0) - func.coalesce(written_off.c.gone, 0)
    query = (
        select(CreditGrant.account_id, CreditGrant.id, leftover)
        .join(used, used.c.grant_id == CreditGrant.id, isouter=True)
        .join(written_off, written_off.c.grant_id == CreditGrant.id, isouter=True)
        .where(CreditGrant.expires_at <= now, leftover > 0)
    )
    if account_id is not None:
        query = query.where(CreditGrant.account_id == account_id)
    return [(a, g, int(n)) for a, g, n in session.exec(query).all()]


def _new_id() -> str:
    return str(uuid.uuid4())
