"""The credit ledger: grants, reservations (hold, commit, release), expiry, balance.

Synchronous SQLAlchemy Core on the sqlmodel tables (reserve and commit run on every
removal, and the ORM's unit of work cost several times their SQL; docs/benchmarks.md#before-issue-18);
the gRPC servicer calls it in a thread. Every write locks the
account first (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite every transaction is
BEGIN IMMEDIATE, see db.py), so concurrent reserves of one account run one at a time
and can never spend the same credit twice. Every operation is scoped to one account id:
a reservation or grant of another account is simply not found.

Every amount is in millicredits (services/common/credits.py): thousandths of a credit
as integers, so prices such as 0.25 are exact (migration 0003_units multiplied the
whole credits of earlier rows by 1000).

The ledger is append-only. Each entry carries `amount` (change of the available
balance) and `held` (change of the held credits):

    grant    +n  0     reserve  -n +n    commit   0 -n
    release  +n -n     expire   -left 0  (what an expired grant still had)
    refund   +n  0     (a committed result the gateway could not hand over)

What each grant has left is `amount - used`: `used` counts what live (held or
committed) reservations took from it, per `reservation_allocations`, and changes with
them in the same transaction.

Before any write (and before the balance is read) the account is settled: holds past
their expiry are released and expired grants are written off, so the entries of an
account always add up to its balance and expired credits are never spendable.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import Connection, Engine, Row, delete, func, insert, select, update

from services.accounts.models import Account, CreditGrant, LedgerEntry, Reservation, ReservationAllocation
from services.common import credits
from services.common.errors import ServiceError, invalid_argument
from services.common.sql import aware

HELD, COMMITTED, RELEASED = "held", "committed", "released"
# The request hash of a compacted reservation: no request hashes to it.
COMPACTED = ""
GRANT_SOURCES = ("signup", "purchase", "admin")
Clock = Callable[[], datetime]

ACCOUNTS = Account.__table__  # type: ignore[attr-defined]
GRANTS = CreditGrant.__table__  # type: ignore[attr-defined]
RESERVATIONS = Reservation.__table__  # type: ignore[attr-defined]
ALLOCATIONS = ReservationAllocation.__table__  # type: ignore[attr-defined]
ENTRIES = LedgerEntry.__table__  # type: ignore[attr-defined]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Outcome(enum.Enum):
    NEW = "new"  # held now; the caller commits or releases it
    DUPLICATE_HELD = "duplicate_held"  # another call holds this key
    DUPLICATE_COMMITTED = "duplicate_committed"  # already charged
    DUPLICATE_RELEASED = "duplicate_released"  # an earlier try failed; held again now
    REPLAY = "replay"  # already charged and a replay asked for: made again, free


@dataclass(frozen=True)
class Reserved:
    reservation_id: str
    outcome: Outcome
    kept_result_id: str = ""  # REPLAY: the result the charged call kept
    replays_left: int = 0  # REPLAY: how many more the key allows

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
    """In millicredits; the message and metadata show credits as decimals."""
    available_text, wanted_text = credits.text(available), credits.text(wanted)
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"not enough credits: this request costs {wanted_text} and {available_text} are available; "
        "buy credits or wait for requests in flight to finish",
        reason="INSUFFICIENT_CREDITS",
        quota_subject="credits",
        metadata={"available": available_text, "required": wanted_text},
    )


def keyed_fingerprint(fingerprint_key: str, request_hash: str) -> str:
    """What is stored of a request's sha256: its HMAC under the account's own secret, so that
    a copy of the database cannot be checked against a known photo (and erasing the account,
    its secret with it, leaves nothing to check against)."""
    return hmac.new(bytes.fromhex(fingerprint_key), request_hash.encode(), hashlib.sha256).hexdigest()


class Ledger:
    def __init__(
        self, engine: Engine, *, hold_timeout: timedelta, clock: Clock = utc_now, replays_per_key: int = 3
    ) -> None:
        self.engine = engine
        self.hold_timeout = hold_timeout
        self.clock = clock
        # Free replays of a served key: bounded, since each makes the result again.
        self.replays_per_key = replays_per_key

    # -- writes ---------------------------------------------------------------------

    def grant(self, account_id: str, amount: int, source: str, expires_at: datetime) -> str:
        with self.engine.begin() as db:
            return self.grant_in(db, account_id, amount, source, expires_at)

    def grant_in(self, db: Connection, account_id: str, amount: int, source: str, expires_at: datetime) -> str:
        """A grant inside the caller's transaction (sign-up writes the account and its credits at once)."""
        if amount <= 0:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "amount must be a positive number of credits", field="amount"
            )
        if source not in GRANT_SOURCES:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, f"source must be one of {', '.join(GRANT_SOURCES)}", field="source"
            )
        now = self._lock_and_settle(db, account_id)
        if expires_at <= now:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "the grant would already be expired", field="expires_in_days"
            )
        grant_id = _new_id()
        db.execute(
            insert(GRANTS).values(
                id=grant_id,
                account_id=account_id,
                amount=amount,
                source=source,
                expires_at=expires_at,
                created_at=now,
                used=0,
            )
        )
        self._entry(db, account_id, "grant", amount, 0, now, grant_id=grant_id)
        return grant_id

    def reserve(
        self, account_id: str, idempotency_key: str, amount: int, request_hash: str, *, replay: bool = False
    ) -> Reserved:
        """Holds `amount` under the key. A key already charged for this request is a
        DUPLICATE_COMMITTED, or with `replay` (the caller can serve one) a REPLAY while the key
        has replays left: counted here, nothing held or written to the ledger."""
        if amount <= 0:
            raise invalid_argument("amount must be positive", field="amount")
        if not idempotency_key or len(idempotency_key) > 200:
            raise invalid_argument(
                f"idempotency_key has {len(idempotency_key)} characters; give 1 to 200", field="idempotency_key"
            )
        with self.engine.begin() as db:
            # On the latency path of every removal: it frees lapsed holds (their credits
            # may be spent now) but leaves writing off expired grants to the next read or
            # sweep; it only ever spends unexpired grants, so the write-off cannot change it.
            now = self._lock_and_release_lapsed(db, account_id)
            fingerprint_key = db.execute(
                select(ACCOUNTS.c.fingerprint_key).where(ACCOUNTS.c.id == account_id)
            ).scalar_one()
            request_hash = keyed_fingerprint(fingerprint_key, request_hash)
            columns = RESERVATIONS.c
            earlier = db.execute(
                select(columns.id, columns.request_hash, columns.state, columns.replays, columns.kept_result_id).where(
                    columns.account_id == account_id, columns.idempotency_key == idempotency_key
                )
            ).first()
            if earlier is not None:
                if not hmac.compare_digest(earlier.request_hash, request_hash):
                    raise ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "idempotency key reused for a different request; use a new key for a new request",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        field="idempotency_key",
                    )
                if earlier.state == COMMITTED:
                    if not replay or earlier.replays >= self.replays_per_key:
                        return Reserved(earlier.id, Outcome.DUPLICATE_COMMITTED)
                    db.execute(update(RESERVATIONS).where(columns.id == earlier.id).values(replays=earlier.replays + 1))
                    left = self.replays_per_key - earlier.replays - 1
                    return Reserved(earlier.id, Outcome.REPLAY, earlier.kept_result_id, left)
                if earlier.state == HELD:  # settled above, so this hold is live
                    return Reserved(earlier.id, Outcome.DUPLICATE_HELD)

            # Earliest expiry first, from what each unexpired grant has left.
            left = amount
            takes: list[tuple[str, int]] = []
            for grant in self._unexpired_grants(db, account_id, now):
                if left == 0:
                    break
                take = min(left, grant.left)
                if take > 0:
                    takes.append((grant.id, take))
                    left -= take
            if left > 0:
                raise insufficient_credits(amount - left, amount)  # the transaction rolls back

            hold = {"amount": amount, "state": HELD, "hold_expires_at": now + self.hold_timeout}
            if earlier is None:
                reservation_id, outcome = _new_id(), Outcome.NEW
                db.execute(
                    insert(RESERVATIONS).values(
                        id=reservation_id,
                        account_id=account_id,
                        idempotency_key=idempotency_key,
                        request_hash=request_hash,
                        created_at=now,
                        **hold,
                    )
                )
            else:  # released: the earlier try failed and was not charged; this retry is
                reservation_id, outcome = earlier.id, Outcome.DUPLICATE_RELEASED
                db.execute(delete(ALLOCATIONS).where(ALLOCATIONS.c.reservation_id == reservation_id))
                db.execute(update(RESERVATIONS).where(RESERVATIONS.c.id == reservation_id).values(**hold))
            for grant_id, take in takes:
                db.execute(insert(ALLOCATIONS).values(reservation_id=reservation_id, grant_id=grant_id, amount=take))
                _count_used(db, grant_id, take)
            self._entry(db, account_id, "reserve", -amount, amount, now, reservation_id=reservation_id)
            return Reserved(reservation_id, outcome)

    def commit(self, account_id: str, reservation_id: str, kept_result_id: str = "") -> str:
        """Charges a hold (idempotent), naming the result it kept, if any, for its replays."""
        # On the latency path of every removal, so it settles only what it touches:
        # its own hold, if that lapsed (committing never changes what grants hold).
        with self.engine.begin() as db:
            self._lock(db, account_id)
            now = self.clock()
            reservation = self._reservation(db, account_id, reservation_id)
            state = reservation.state
            if state == HELD and aware(reservation.hold_expires_at) <= now:
                self._release(db, account_id, reservation, now)
                self._expire_grants(db, account_id, now)
                state = RELEASED
            if state == RELEASED:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the reservation was released (failed, or not committed in time); reserve again",
                    reason="RESERVATION_RELEASED",
                )
            if state == HELD:
                db.execute(
                    update(RESERVATIONS)
                    .where(RESERVATIONS.c.id == reservation_id)
                    .values(state=COMMITTED, kept_result_id=kept_result_id[:64])
                )
                self._entry(db, account_id, "commit", 0, -reservation.amount, now, reservation_id=reservation_id)
                state = COMMITTED
            return state

    def release(self, account_id: str, reservation_id: str, *, undelivered: bool = False) -> str:
        """Releases a hold; with `undelivered`, also undoes a commit whose result never reached
        the caller (the gateway commits before it hands a result over, so it can say)."""
        with self.engine.begin() as db:
            now = self._lock_and_settle(db, account_id)
            reservation = self._reservation(db, account_id, reservation_id)
            state = reservation.state
            if state == COMMITTED and undelivered:
                db.execute(update(RESERVATIONS).where(RESERVATIONS.c.id == reservation.id).values(state=RELEASED))
                self._return_to_grants(db, reservation.id)
                self._entry(db, account_id, "refund", reservation.amount, 0, now, reservation.id)
                self._expire_grants(db, account_id, now)
                return RELEASED
            if state == COMMITTED:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the reservation is already committed and cannot be released",
                    reason="RESERVATION_COMMITTED",
                )
            if state == HELD:
                self._release(db, account_id, reservation, now)
                # Credits that return to a grant which expired meanwhile expire now.
                self._expire_grants(db, account_id, now)
                state = RELEASED
            return state

    def settle(self, account_id: str) -> None:
        with self.engine.begin() as db:
            self._lock_and_settle(db, account_id)

    def sweep(self) -> int:
        """Settles every account with a lapsed hold or an expired grant left; returns how many."""
        now = self.clock()
        with self.engine.begin() as db:
            lapsed = db.execute(
                select(RESERVATIONS.c.account_id)
                .where(RESERVATIONS.c.state == HELD, RESERVATIONS.c.hold_expires_at <= now)
                .distinct()
            ).scalars()
            accounts = set(lapsed) | {account_id for account_id, _, _ in _expired_leftovers(db, now)}
        for account_id in sorted(accounts):
            self.settle(account_id)
        return len(accounts)

    def compact(self, fingerprint_ttl: timedelta, released_ttl: timedelta) -> tuple[int, int]:
        """Forgets what the ledger no longer needs; returns (reservations compacted, deleted).

        - a settled (committed or released) reservation whose last reserve is older than
          `fingerprint_ttl` loses its idempotency key and request fingerprint (sha256 of the
          image and options): the key becomes the reservation's own id, the hash "" (which
          no request has); its amount, state and allocations stay, so no balance changes;
        - a released reservation older than `released_ttl` goes with its allocations (its
          credits went back to their grants at release, so `used` does not count them).

        The hold's end stands for the last reserve (a retry after a release renews it).
        Each account is locked while its rows change, like every other ledger write.
        """
        now = self.clock()
        stale_key = now - fingerprint_ttl + self.hold_timeout
        stale_release = now - released_ttl + self.hold_timeout
        columns = RESERVATIONS.c
        to_compact = (
            (columns.state != HELD) & columns.request_hash.is_not(None) & (columns.hold_expires_at <= stale_key)
        )
        to_delete = (columns.state == RELEASED) & (columns.hold_expires_at <= stale_release)
        with self.engine.begin() as db:
            accounts = set(db.execute(select(columns.account_id).where(to_compact | to_delete).distinct()).scalars())
        compacted = deleted = 0
        for account_id in sorted(accounts):
            with self.engine.begin() as db:
                self._lock(db, account_id)
                mine = columns.account_id == account_id
                gone = select(columns.id).where(mine & to_delete)
                db.execute(delete(ALLOCATIONS).where(ALLOCATIONS.c.reservation_id.in_(gone)))
                deleted += db.execute(delete(RESERVATIONS).where(mine & to_delete)).rowcount
                compacted += db.execute(
                    update(RESERVATIONS)
                    .where(mine & to_compact)
                    .values(idempotency_key=columns.id, request_hash=COMPACTED, kept_result_id="")
                ).rowcount
        return compacted, deleted

    # -- reads ----------------------------------------------------------------------

    def balance(self, account_id: str) -> BalanceView:
        with self.engine.begin() as db:
            now = self._lock_and_settle(db, account_id)
            return self._balance(db, account_id, now)

    def entries(
        self, account_id: str, limit: int = 100, before_seq: int = 0
    ) -> tuple[list[tuple[Row[Any], str]], BalanceView]:
        """Newest first (rows of ledger_entries, by seq, the order of writing), each with its
        reservation's idempotency key (or ""); only entries older than `before_seq` if set
        (keyset pagination: a page token holds the seq of the last entry shown)."""
        with self.engine.begin() as db:
            now = self._lock_and_settle(db, account_id)
            query = (
                select(ENTRIES, RESERVATIONS.c.idempotency_key)
                .join_from(ENTRIES, RESERVATIONS, RESERVATIONS.c.id == ENTRIES.c.reservation_id, isouter=True)
                .where(ENTRIES.c.account_id == account_id)
            )
            if before_seq:
                query = query.where(ENTRIES.c.seq < before_seq)
            rows = db.execute(query.order_by(ENTRIES.c.seq.desc()).limit(limit)).all()
            # A compacted reservation's key is gone (it holds the reservation's own id).
            return [
                (row, "" if row.idempotency_key == row.reservation_id else row.idempotency_key or "") for row in rows
            ], self._balance(db, account_id, now)

    # -- inside a transaction -------------------------------------------------------

    def _lock(self, db: Connection, account_id: str) -> None:
        """Serialises this account's ledger transactions (row lock on PostgreSQL; SQLite locks at BEGIN)."""
        found = db.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account_id).with_for_update()).first()
        if found is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")

    def _lock_and_settle(self, db: Connection, account_id: str) -> datetime:
        now = self._lock_and_release_lapsed(db, account_id)
        self._expire_grants(db, account_id, now)
        return now

    def _lock_and_release_lapsed(self, db: Connection, account_id: str) -> datetime:
        self._lock(db, account_id)
        now = self.clock()
        lapsed = db.execute(
            select(RESERVATIONS.c.id, RESERVATIONS.c.amount).where(
                RESERVATIONS.c.account_id == account_id,
                RESERVATIONS.c.state == HELD,
                RESERVATIONS.c.hold_expires_at <= now,
            )
        ).all()
        for reservation in lapsed:
            self._release(db, account_id, reservation, now)
        return now

    def _release(self, db: Connection, account_id: str, reservation: Row[Any], now: datetime) -> None:
        """Releases a held reservation (a row with its id and amount): its credits go back to their grants."""
        db.execute(update(RESERVATIONS).where(RESERVATIONS.c.id == reservation.id).values(state=RELEASED))
        self._return_to_grants(db, reservation.id)
        self._entry(db, account_id, "release", reservation.amount, -reservation.amount, now, reservation.id)

    def _return_to_grants(self, db: Connection, reservation_id: str) -> None:
        allocations = db.execute(
            select(ALLOCATIONS.c.grant_id, ALLOCATIONS.c.amount).where(ALLOCATIONS.c.reservation_id == reservation_id)
        ).all()
        for grant_id, take in allocations:
            _count_used(db, grant_id, -take)

    def _expire_grants(self, db: Connection, account_id: str, now: datetime) -> None:
        for _, grant_id, leftover in _expired_leftovers(db, now, account_id):
            self._entry(db, account_id, "expire", -leftover, 0, now, grant_id=grant_id)

    def _unexpired_grants(self, db: Connection, account_id: str, now: datetime) -> Sequence[Row[Any]]:
        """Rows (id, left, expires_at) of the unexpired grants, earliest expiry first."""
        return db.execute(
            select(GRANTS.c.id, (GRANTS.c.amount - GRANTS.c.used).label("left"), GRANTS.c.expires_at)
            .where(GRANTS.c.account_id == account_id, GRANTS.c.expires_at > now)
            .order_by(GRANTS.c.expires_at, GRANTS.c.created_at, GRANTS.c.id)
        ).all()

    def _balance(self, db: Connection, account_id: str, now: datetime) -> BalanceView:
        with_credits = [grant for grant in self._unexpired_grants(db, account_id, now) if grant.left > 0]
        held = db.execute(
            select(func.coalesce(func.sum(RESERVATIONS.c.amount), 0)).where(
                RESERVATIONS.c.account_id == account_id, RESERVATIONS.c.state == HELD
            )
        ).scalar_one()
        next_expiry = aware(with_credits[0].expires_at) if with_credits else None
        return BalanceView(
            available=sum(grant.left for grant in with_credits),
            held=int(held),
            next_expiry=next_expiry,
            expiring_next=sum(grant.left for grant in with_credits if aware(grant.expires_at) == next_expiry),
        )

    def _reservation(self, db: Connection, account_id: str, reservation_id: str) -> Row[Any]:
        columns = RESERVATIONS.c
        reservation = db.execute(
            select(columns.id, columns.amount, columns.state, columns.hold_expires_at).where(
                columns.id == reservation_id, columns.account_id == account_id
            )
        ).first()
        if reservation is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such reservation", reason="RESERVATION_NOT_FOUND")
        return reservation

    def _entry(
        self,
        db: Connection,
        account_id: str,
        kind: str,
        amount: int,
        held: int,
        now: datetime,
        reservation_id: str | None = None,
        grant_id: str | None = None,
    ) -> None:
        db.execute(
            insert(ENTRIES).values(
                account_id=account_id,
                kind=kind,
                amount=amount,
                held=held,
                reservation_id=reservation_id,
                grant_id=grant_id,
                created_at=now,
            )
        )


def _count_used(db: Connection, grant_id: str, millicredits: int) -> None:
    """The one place a grant's running `used` changes: + what a reservation takes, - what a release returns."""
    db.execute(update(GRANTS).where(GRANTS.c.id == grant_id).values(used=GRANTS.c.used + millicredits))


def _expired_leftovers(db: Connection, now: datetime, account_id: str | None = None) -> list[tuple[str, str, int]]:
    """(account id, grant id, credits) still unspent, unheld and not yet written off on expired grants."""
    written_off = (
        select(func.coalesce(func.sum(-ENTRIES.c.amount), 0))
        .where(ENTRIES.c.kind == "expire", ENTRIES.c.grant_id == GRANTS.c.id)
        .scalar_subquery()
    )
    leftover = GRANTS.c.amount - GRANTS.c.used - written_off
    query = select(GRANTS.c.account_id, GRANTS.c.id, leftover).where(GRANTS.c.expires_at <= now, leftover > 0)
    if account_id is not None:
        query = query.where(GRANTS.c.account_id == account_id)
    return [(a, g, int(n)) for a, g, n in db.execute(query).all()]


def _new_id() -> str:
    return str(uuid.uuid4())
