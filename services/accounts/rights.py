"""A user's rights over the data accounts holds: the owner's access log, correction of the
e-mail, export, and erasure as a saga with a durable record (synchronous; the servicer
calls it in a thread, the resume job in its own).

Erasure, in order:
1. the request: in one transaction every key of the account is revoked (the next call
   with any of them fails) and an `erasures` row records what is to be done;
2. retention crypto-shreds the account (its key first, then blobs and rows); its own
   record makes that step finish even if retention crashes midway;
3. accounts deletes the profile, credentials, keys, reservations (the idempotency keys
   and image fingerprints), grants, ledger and access log in one transaction, keeping
   only purchases, under a random pseudonym, and marks the erasure done.
Each step is idempotent; `resume` runs every unfinished erasure again (at start and
periodically), so a crash of either service at any point ends in a finished erasure.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from services.accounts.ledger import Clock, utc_now
from services.accounts.models import (
    AccessLogEntry,
    Account,
    ApiKey,
    CreditGrant,
    EmailChange,
    Erasure,
    LedgerEntry,
    PendingSignUp,
    Reservation,
    ReservationAllocation,
    RetainedFinancialRecord,
)
from services.common.errors import ServiceError
from services.common.sql import compact_sqlite

log = logging.getLogger(__name__)

PENDING, DONE = "pending", "done"
# What must outlive an erased account (bookkeeping of payments): purchases only.
RETAINED_SOURCES = ("purchase",)

# Erases the account's data in retention (raises if that did not complete).
EraseRetention = Callable[[str], None]


def record_access(engine: Engine, account_id: str, actor: str, action: str, *, clock: Clock = utc_now) -> None:
    with Session(engine) as session, session.begin():
        session.add(AccessLogEntry(at=clock(), account_id=account_id, actor=actor, action=action))


def access_log(engine: Engine, account_id: str, limit: int = 1000, before_id: int = 0) -> list[AccessLogEntry]:
    """Newest first (by id, the order of writing); only entries older than `before_id` if set."""
    query = select(AccessLogEntry).where(AccessLogEntry.account_id == account_id)
    if before_id:
        query = query.where(col(AccessLogEntry.id) < before_id)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(query.order_by(col(AccessLogEntry.id).desc()).limit(limit)).all())


@dataclass(frozen=True)
class ErasureState:
    erasure_id: str
    state: str


class Erasures:
    """The erasure saga (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        erase_retention: EraseRetention,
        *,
        forget_mail: Callable[[str], int] = lambda address: 0,
        clock: Clock = utc_now,
    ) -> None:
        self.engine = engine
        self.erase_retention = erase_retention
        self.forget_mail = forget_mail  # deletes what the outbox keeps for an address
        self.clock = clock
        self._running: set[str] = set()
        self._guard = threading.Condition()

    def request(self, account_id: str, requested_by: str) -> ErasureState:
        """Step 1: revoke every key and record the erasure (idempotent)."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            existing = session.exec(select(Erasure).where(Erasure.account_id == account_id)).first()
            if existing is not None:
                return ErasureState(existing.id, existing.state)
            if session.get(Account, account_id) is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
            session.execute(
                update(ApiKey)
                .where(col(ApiKey.account_id) == account_id, col(ApiKey.revoked_at).is_(None))
                .values(revoked_at=now)
            )
            erasure = Erasure(
                id=str(uuid.uuid4()), account_id=account_id, requested_by=requested_by, state=PENDING, requested_at=now
            )
            session.add(erasure)
        log.info("erasure %s requested (%s); keys revoked", erasure.id, requested_by.split(":")[0])
        return ErasureState(erasure.id, PENDING)

    def is_erasing(self, account_id: str) -> bool:
        with Session(self.engine) as session:
            return session.exec(select(Erasure.id).where(Erasure.account_id == account_id)).first() is not None

    def run(self, erasure_id: str, wait_s: float = 60.0) -> str:
        """Steps 2 and 3; returns the state ("done", or "pending" if it could not finish now).

        A run that finds another one on the same erasure (the pending sweep, a retried call)
        waits up to `wait_s` for it and answers with the erasure's state then, instead of
        saying "pending" about an erasure that is a moment from done."""
        with self._guard:
            if not self._guard.wait_for(lambda: erasure_id not in self._running, timeout=wait_s):
                return PENDING
            self._running.add(erasure_id)
        try:
            return self._run(erasure_id)
        finally:
            with self._guard:
                self._running.discard(erasure_id)
                self._guard.notify_all()

    def _run(self, erasure_id: str) -> str:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            erasure = session.get(Erasure, erasure_id)
            if erasure is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such erasure", reason="ERASURE_NOT_FOUND")
            if erasure.state == DONE:
                return DONE
            erasure.attempts += 1
            session.add(erasure)
        account_id = erasure.account_id
        if erasure.retention_erased_at is None:
            self.erase_retention(account_id)
            with Session(self.engine) as session, session.begin():
                session.execute(
                    update(Erasure).where(col(Erasure.id) == erasure_id).values(retention_erased_at=self.clock())
                )
        self._delete_rows(erasure_id, account_id)
        log.info("erasure %s done", erasure_id)
        return DONE

    def _delete_rows(self, erasure_id: str, account_id: str) -> None:
        now = self.clock()
        pseudonym = str(uuid.uuid4())  # random: nothing leads from it back to the account
        with Session(self.engine) as session:
            account = session.get(Account, account_id)
            email = account.email if account is not None else ""
        if email:  # first, while the address is still known (a crash here is simply redone)
            self.forget_mail(email)
        with Session(self.engine) as session, session.begin():
            purchases = session.exec(
                select(CreditGrant.amount, CreditGrant.created_at).where(
                    CreditGrant.account_id == account_id, col(CreditGrant.source).in_(RETAINED_SOURCES)
                )
            ).all()
            for amount, created_at in purchases:
                session.add(
                    RetainedFinancialRecord(
                        pseudonym=pseudonym, kind="purchase", amount=amount, occurred_at=created_at, erased_at=now
                    )
                )
            reservations = select(Reservation.id).where(Reservation.account_id == account_id)
            session.execute(
                delete(ReservationAllocation).where(col(ReservationAllocation.reservation_id).in_(reservations))
            )
            for table in (LedgerEntry, Reservation, CreditGrant, ApiKey, AccessLogEntry, EmailChange):
                session.execute(delete(table).where(table.account_id == account_id))  # type: ignore[attr-defined]
            session.execute(delete(Account).where(col(Account.id) == account_id))
            if email:  # a sign-up of the same address waiting for its code
                session.execute(delete(PendingSignUp).where(col(PendingSignUp.email) == email))
            session.execute(update(Erasure).where(col(Erasure.id) == erasure_id).values(state=DONE, finished_at=now))
        compact_sqlite(self.engine)

    def resume(self) -> int:
        """Runs every unfinished erasure again; returns how many finished now."""
        with Session(self.engine) as session:
            pending = list(session.exec(select(Erasure.id).where(Erasure.state == PENDING)).all())
        finished = 0
        for erasure_id in pending:
            try:
                finished += self.run(erasure_id, wait_s=0) == DONE  # one in progress: the next round
            except Exception as error:  # the next round tries again
                log.warning("erasure %s still pending: %s", erasure_id, type(error).__name__)
        return finished
