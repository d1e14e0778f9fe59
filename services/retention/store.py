"""Kept results: sealed into the blob store, described in SQL, readable until they expire.

Every operation takes the time from an injected clock, so expiry is testable, and
every store, read, delete, erase and expiry is written to the access log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import Engine, and_, delete, or_
from sqlmodel import Session, col, select

from services.common.errors import ServiceError
from services.common.sql import aware, compact_sqlite
from services.retention import crypto
from services.retention.blobstore import BlobNotFound, BlobStore
from services.retention.models import AccessLogEntry, AccountKey, Erasure, KeptResult

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
PENDING, READY = "pending", "ready"


def utc_now() -> datetime:
    return datetime.now(UTC)


TOKEN_PREFIX = "crt_"  # Cutout result token


def token_hash(token: str) -> str:
    # Tokens carry 192 random bits, so a fast hash is enough to make the table useless to a thief.
    return hashlib.sha256(token.encode()).hexdigest()


NOT_FOUND = ServiceError(
    grpc.StatusCode.NOT_FOUND,
    "no such result: it never existed, has expired, or was deleted",
    reason="RESULT_NOT_FOUND",
)


@dataclass(frozen=True)
class Stored:
    result: KeptResult
    token: str  # shown once; only its hash is kept

    @property
    def result_id(self) -> str:
        return self.result.id

    @property
    def expires_at(self) -> datetime:
        return aware(self.result.expires_at)


@dataclass(frozen=True)
class Fetched:
    result: KeptResult
    data: bytes


@dataclass(frozen=True)
class SweepReport:
    expired: int
    abandoned: int  # stores a crash interrupted
    access_log: int = 0  # access-log lines past their lifetime

    def __bool__(self) -> bool:
        return bool(self.expired or self.abandoned or self.access_log)


class ResultStore:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        master_keys: crypto.MasterKeys,
        *,
        clock: Clock = utc_now,
        pending_timeout: timedelta = timedelta(minutes=10),
        erase_delete_interval_s: float = 0.0,
        access_log_lifetime: timedelta = timedelta(days=180),
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.master_keys = master_keys
        self.clock = clock
        self.pending_timeout = pending_timeout
        self.erase_delete_interval_s = erase_delete_interval_s
        self.access_log_lifetime = access_log_lifetime

    # -- keys -------------------------------------------------------------------------

    def _account_key(self, session: Session, account_id: str, *, create: bool) -> bytes | None:
        row = session.get(AccountKey, account_id)
        if row is None:
            if not create:
                return None
            if session.get(Erasure, account_id) is not None:
                # An erased account gets no new key: nothing of it may be stored again.
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this account has been erased; nothing can be kept for it",
                    reason="ACCOUNT_ERASED",
                )
            key = crypto.new_key()
            master_key_id, wrapped = self.master_keys.wrap(key, account_id)
            session.add(
                AccountKey(
                    account_id=account_id, master_key_id=master_key_id, wrapped_key=wrapped, created_at=self.clock()
                )
            )
            return key
        return self.master_keys.unwrap(row.master_key_id, row.wrapped_key, account_id)

    def _log(self, session: Session, account_id: str, actor: str, action: str, result_id: str = "") -> None:
        session.add(
            AccessLogEntry(at=self.clock(), account_id=account_id, actor=actor, action=action, result_id=result_id)
        )

    # -- store ------------------------------------------------------------------------

    def store(
        self,
        account_id: str,
        data: bytes,
        *,
        media_type: str,
        width: int,
        height: int,
        ttl: timedelta,
        result_id: str = "",
    ) -> Stored:
        """Seals and writes the bytes; the result becomes visible only once they are all written.
        `result_id`: the caller's (see StoreHeader), else a new one."""
        now = self.clock()
        # The prefix says what the token is and keeps it from starting with "-" (read as a flag).
        result_id, token = result_id or secrets.token_hex(16), TOKEN_PREFIX + secrets.token_urlsafe(24)
        object_key = crypto.new_key()
        context = crypto.object_context(account_id, result_id)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            account_key = self._account_key(session, account_id, create=True)
            assert account_key is not None
            result = KeptResult(
                id=result_id,
                account_id=account_id,
                token_hash=token_hash(token),
                state=PENDING,
                media_type=media_type,
                width=width,
                height=height,
                size=len(data),
                wrapped_object_key=crypto.seal(account_key, object_key, context),
                created_at=now,
                expires_at=now + ttl,
            )
            session.add(result)
        # A crash from here on leaves a pending row (never listed, never readable) and
        # perhaps a blob; the sweep removes both.
        try:
            self.blobs.put(result_id, crypto.seal(object_key, data, context))
        except Exception:
            # The blob store refused (a full disk): the pending row goes at once, not at
            # the sweep, so that nothing of this result is left behind.
            with contextlib.suppress(Exception), Session(self.engine) as session, session.begin():
                session.execute(delete(KeptResult).where(col(KeptResult.id) == result_id))
            raise
        with Session(self.engine) as session, session.begin():
            row = session.get(KeptResult, result_id)
            assert row is not None
            row.state = result.state = READY
            self._log(session, account_id, "owner", "store", result_id)
        return Stored(result, token)

    # -- read -------------------------------------------------------------------------

    def fetch_by_token(self, token: str) -> Fetched:
        with Session(self.engine) as session, session.begin():
            row = session.exec(select(KeptResult).where(KeptResult.token_hash == token_hash(token))).first()
            return self._open(session, row, actor="token")

    def fetch_owned(self, account_id: str, result_id: str) -> Fetched:
        with Session(self.engine) as session, session.begin():
            row = session.get(KeptResult, result_id)
            if row is not None and row.account_id != account_id:
                row = None  # another account's result does not exist for this caller
            return self._open(session, row, actor="owner")

    def _open(self, session: Session, row: KeptResult | None, *, actor: str) -> Fetched:
        if row is None or row.state != READY or aware(row.expires_at) <= self.clock():
            raise NOT_FOUND
        account_key = self._account_key(session, row.account_id, create=False)
        if account_key is None:  # the account was erased
            raise NOT_FOUND
        context = crypto.object_context(row.account_id, row.id)
        try:
            object_key = crypto.unseal(account_key, row.wrapped_object_key, context)
            data = crypto.unseal(object_key, self.blobs.get(row.id), context)
        except BlobNotFound:
            raise NOT_FOUND from None
        except crypto.TamperedError:
            raise ServiceError(
                grpc.StatusCode.DATA_LOSS,
                "the stored result failed its integrity check and will not be returned; store it again",
                reason="RESULT_CORRUPT",
            ) from None
        self._log(session, row.account_id, actor, "read", row.id)
        session.expunge(row)
        return Fetched(row, data)

    def list(self, account_id: str, limit: int = 100, after: tuple[datetime, str] | None = None) -> list[KeptResult]:
        """Newest first, in a stable order (created time, then id); `after` is the (created_at,
        id) of the last result a previous page showed: keyset pagination, so results stored
        or deleted between pages neither shift nor repeat the rest."""
        query = select(KeptResult).where(
            KeptResult.account_id == account_id, KeptResult.state == READY, KeptResult.expires_at > self.clock()
        )
        if after is not None:
            created_at, result_id = after
            query = query.where(
                or_(
                    col(KeptResult.created_at) < created_at,
                    and_(col(KeptResult.created_at) == created_at, col(KeptResult.id) < result_id),
                )
            )
        with Session(self.engine) as session:
            rows = session.exec(
                query.order_by(col(KeptResult.created_at).desc(), col(KeptResult.id).desc()).limit(limit)
            ).all()
            return list(rows)

    def access_log(self, account_id: str, limit: int = 1000, before_id: int = 0) -> list[AccessLogEntry]:
        """Newest first (by id, the order of writing); only entries older than `before_id` if set."""
        query = select(AccessLogEntry).where(AccessLogEntry.account_id == account_id)
        if before_id:
            query = query.where(col(AccessLogEntry.id) < before_id)
        with Session(self.engine) as session:
            rows = session.exec(query.order_by(col(AccessLogEntry.id).desc()).limit(limit)).all()
            return list(rows)

    # -- delete -----------------------------------------------------------------------

    def delete(self, account_id: str, result_id: str) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(KeptResult, result_id)
            if row is None or row.account_id != account_id or row.state != READY:
                raise NOT_FOUND
            session.delete(row)
            self._log(session, account_id, "owner", "delete", result_id)
        self.blobs.delete(result_id)

    def erase_account(self, account_id: str) -> int:
        """Crypto-shreds the account, then removes what is left of it; returns the results removed.

        First, in one transaction, the account's key is destroyed and the erasure recorded:
        from that instant no copy of its blobs (a backup, a disk) can be opened, even with the
        master key. Then the blobs go, then the rows and the access log. Idempotent: a crash
        at any point leaves the record unfinished, and `resume_erasures` (at start and in
        every sweep) or the next call completes it.
        """
        with Session(self.engine) as session, session.begin():
            session.execute(delete(AccountKey).where(AccountKey.account_id == account_id))
            if session.get(Erasure, account_id) is None:
                session.add(Erasure(account_id=account_id, requested_at=self.clock()))
        with Session(self.engine) as session:
            result_ids = list(session.exec(select(KeptResult.id).where(KeptResult.account_id == account_id)).all())
        for result_id in result_ids:
            if self.erase_delete_interval_s:
                time.sleep(self.erase_delete_interval_s)
            self.blobs.delete(result_id)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(KeptResult).where(KeptResult.account_id == account_id))
            session.execute(delete(AccessLogEntry).where(AccessLogEntry.account_id == account_id))
            erasure = session.get(Erasure, account_id)
            if erasure is not None and erasure.finished_at is None:
                erasure.finished_at = self.clock()
        self._compact()
        return len(result_ids)

    def resume_erasures(self) -> int:
        """Finishes the erasures a crash interrupted; returns how many."""
        with Session(self.engine) as session:
            pending = list(session.exec(select(Erasure.account_id).where(Erasure.finished_at.is_(None))).all())  # type: ignore[union-attr]
        for account_id in pending:
            self.erase_account(account_id)
            log.info("resumed an interrupted erasure")
        return len(pending)

    def _compact(self) -> None:
        """SQLite: fold the write-ahead log into the file and empty it, so that no old page
        (holding an erased row) stays in the -wal file; deleted cells are already zeroed
        (secure_delete)."""
        if self.engine.dialect.name != "sqlite":
            return
        compact_sqlite(self.engine)

    def sweep(self) -> SweepReport:
        """Removes expired results and what interrupted stores and erasures left behind."""
        self.resume_erasures()
        now = self.clock()
        with Session(self.engine) as session:
            expired = session.exec(
                select(KeptResult.id, KeptResult.account_id).where(
                    KeptResult.state == READY, KeptResult.expires_at <= now
                )
            ).all()
            abandoned = session.exec(
                select(KeptResult.id).where(
                    KeptResult.state == PENDING, KeptResult.created_at <= now - self.pending_timeout
                )
            ).all()
        for result_id, account_id in expired:
            self.blobs.delete(result_id)
            with Session(self.engine) as session, session.begin():
                session.execute(delete(KeptResult).where(KeptResult.id == result_id))
                self._log(session, account_id, "system", "expire", result_id)
        for result_id in abandoned:
            self.blobs.delete(result_id)
            with Session(self.engine) as session, session.begin():
                session.execute(delete(KeptResult).where(KeptResult.id == result_id))
        # The access log is kept for its own lifetime (months), then goes: the owner can
        # see who read their data for that long, and no longer than that is it kept.
        with Session(self.engine) as session, session.begin():
            old_lines = session.execute(
                delete(AccessLogEntry).where(col(AccessLogEntry.at) <= now - self.access_log_lifetime)
            ).rowcount
        return SweepReport(len(expired), len(abandoned), old_lines)
