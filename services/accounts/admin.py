"""cutout.v1.Admin on a listener of its own, inside the cell only (never the public port).

- **Named admins.** Each admin has a token of their own; the admins file holds one line
  per admin, `name sha256:<hex of sha256(token)>` (tokens are 256-bit random, so a fast
  hash suffices, as for API keys). The file is read again when it changes, so admins are
  added and removed without a restart. An API key never works here.
- **Throttled.** Wrong tokens back off per source address (`ADMIN_FAILURES_FREE`, then 2,
  4, 8 s ... up to `ADMIN_BACKOFF_MAX_S`); each admin has a rate (`ADMIN_RATE_PER_S`).
- **Audited.** Every call, allowed or refused, is written to `admin_audit` (who, what,
  which account, outcome, from where) before it is answered; the database refuses any
  UPDATE or DELETE of that table. Look-ups also go into the owner's access log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
from sqlalchemy import Engine
from sqlmodel import Session

from cutout.v1 import account_pb2, cutout_pb2_grpc, rights_pb2
from services.accounts.convert import balance_pb, profile_pb
from services.accounts.ledger import BalanceView, Ledger, utc_now
from services.accounts.models import Account, AdminAuditEntry
from services.accounts.rights import Erasures, record_access
from services.accounts.settings import AccountsSettings
from services.accounts.store import AccountStore
from services.common import credits
from services.common.arrival import ArrivalGuard
from services.common.errors import ServiceError, abort
from services.common.limits import Backoff, LocalRate, Refused
from services.common.metadata import single_value
from services.common.settings import ADMIN_TOKEN_METADATA

log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN = "unknown"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admins_line(name: str, token: str) -> str:
    """A line of the admins file for `name` holding `token` (the token itself is not in it)."""
    return f"{name} sha256:{token_digest(token)}"


class AdminPrincipals:
    """The named admins of the admins file, re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: int | None = None
        self._by_digest: dict[str, str] = {}

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            self._by_digest, self._stamp = {}, None
            return
        if stamp == self._stamp:
            return
        admins: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, digest = line.partition(" ")
            digest = digest.strip().removeprefix("sha256:")
            if not name or len(digest) != 64:
                log.error("admins file line %d ignored: expected `name sha256:<64 hex>`", number)
                continue
            admins[digest.lower()] = name
        self._by_digest, self._stamp = admins, stamp

    @property
    def enabled(self) -> bool:
        self._load()
        return bool(self._by_digest)

    def name_of(self, token: str) -> str | None:
        """The admin holding `token`, or None (compared in constant time against every entry)."""
        self._load()
        given = token_digest(token).encode()
        found = None
        for digest, name in self._by_digest.items():
            if hmac.compare_digest(given, digest.encode()):
                found = name
        return found


def _source(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    return (rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer)[:64]


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str:
    """The one value of `name`; a token sent twice is INVALID_ARGUMENT (services/common/metadata.py)."""
    return single_value(context.invocation_metadata(), name)


class AdminServicer(cutout_pb2_grpc.AdminServicer):
    def __init__(
        self,
        settings: AccountsSettings,
        store: AccountStore,
        ledger: Ledger,
        engine: Engine,
        erasures: Erasures,
        run_erasure: Callable[[str], Awaitable[str]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.engine = engine
        self.erasures = erasures
        self.run_erasure = run_erasure
        self.principals = AdminPrincipals(settings.admins_file)
        self.failures = Backoff(settings.admin_failures_free, settings.admin_backoff_max_s, "wrong admin tokens")
        self.rate = LocalRate(settings.admin_rate_per_s, settings.admin_rate_burst, "admin calls per second")

    def _audit(self, admin: str, method: str, account_id: str, outcome: str, source: str, detail: str = "") -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                AdminAuditEntry(
                    at=utc_now(),
                    admin=admin[:80],
                    method=method,
                    account_id=account_id[:36],
                    outcome=outcome[:32],
                    source=source,
                    detail=detail[:200],
                )
            )

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[str], T],
        account_id: str = "",
        detail: str = "",
    ) -> T:
        """Authorises the caller as a named admin, runs `work(admin)` in a thread and audits
        the outcome (refusals included); a refusal or failure ends the call."""
        source = _source(context)
        admin = UNKNOWN
        try:
            admin = await self._authorise(context, source)
            try:
                result = await asyncio.to_thread(work, admin)
            except ServiceError:
                raise
            except Exception as error:  # the database: say so, without its text
                log.error("admin %s: %s", method, type(error).__name__)
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the accounts database is unavailable; retry shortly",
                    reason="DATABASE_UNAVAILABLE",
                ) from None
        except ServiceError as error:
            log.info("admin call %s by %s refused: %s (%s)", method, admin, error.code.name, error.reason or "")
            await asyncio.to_thread(self._audit, admin, method, account_id, error.code.name, source, detail)
            await abort(context, error)
        if isinstance(result, tuple) and result and isinstance(result[0], Account):
            account_id = result[0].id  # a look-up by e-mail is audited by the account id found
        await asyncio.to_thread(self._audit, admin, method, account_id, grpc.StatusCode.OK.name, source, detail)
        log.info("admin call %s by %s", method, admin)
        return result

    async def _authorise(self, context: grpc.aio.ServicerContext, source: str) -> str:
        if not self.principals.enabled:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "administration is disabled: no admins in CUTOUT_ACCOUNTS_ADMINS_FILE",
                reason="ADMIN_DISABLED",
            )
        try:
            self.failures.check(source)
        except Refused as error:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many wrong admin tokens from this address; retry in {error.retry_after_s:.0f}s",
                reason="ADMIN_THROTTLED",
                quota_subject=error.what,
                retry_after_s=error.retry_after_s,
            ) from None
        token = _metadata(context, ADMIN_TOKEN_METADATA)
        name = self.principals.name_of(token) if token else None
        if name is None:
            self.failures.failed(source)
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "administration needs a named admin's token in the `x-admin-token` metadata",
                reason="ADMIN_TOKEN_INVALID",
            )
        self.failures.succeeded(source)
        try:
            await self.rate.take(name)
        except Refused as error:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many admin calls; retry in {error.retry_after_s:.1f}s",
                reason="ADMIN_THROTTLED",
                quota_subject=error.what,
                retry_after_s=error.retry_after_s,
            ) from None
        return name

    async def GrantCredits(
        self, request: account_pb2.GrantCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.GrantCreditsResponse:
        days = request.expires_in_days or self.settings.grant_credit_days
        source = request.source or "admin"

        def grant(admin: str) -> tuple[str, BalanceView]:
            amount = _granted(request)
            grant_id = self.ledger.grant(request.account_id, amount, source, utc_now() + timedelta(days=days))
            record_access(self.engine, request.account_id, f"admin:{admin}", "grant")
            return grant_id, self.ledger.balance(request.account_id)

        asked = request.amount_decimal or str(request.amount)
        grant_id, balance = await self._call(
            context, "GrantCredits", grant, request.account_id, f"{asked[:40]} credits ({source})"
        )
        return account_pb2.GrantCreditsResponse(grant_id=grant_id, balance=balance_pb(balance))

    async def LookupAccount(
        self, request: account_pb2.LookupAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.LookupAccountResponse:
        def lookup(admin: str) -> tuple[Account, BalanceView, int]:
            if bool(request.account_id) == bool(request.email):
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of account_id or email", field="account_id"
                )
            account = (
                self.store.get(request.account_id) if request.account_id else self.store.find_by_email(request.email)
            )
            # Access to personal data is logged where the owner sees it, and audited.
            record_access(self.engine, account.id, f"admin:{admin}", "lookup")
            return account, self.ledger.balance(account.id), self.store.count_active_keys(account.id)

        account, balance, keys = await self._call(context, "LookupAccount", lookup, request.account_id)
        return account_pb2.LookupAccountResponse(
            profile=profile_pb(account), balance=balance_pb(balance), active_api_keys=keys
        )

    async def DeleteAccount(
        self, request: rights_pb2.AdminDeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> rights_pb2.DeleteAccountResponse:
        def request_erasure(admin: str) -> tuple[str, str]:
            if not request.account_id:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT, "which account? account_id is empty", field="account_id"
                )
            if not request.reason.strip():
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "say why (reason), e.g. `guardian's request: account of a child`",
                    field="reason",
                )
            state = self.erasures.request(request.account_id, f"admin:{admin}")
            return state.erasure_id, state.state

        erasure_id, state = await self._call(
            context, "DeleteAccount", request_erasure, request.account_id, request.reason.strip()
        )
        if state != "done":
            state = await self.run_erasure(erasure_id)
        return rights_pb2.DeleteAccountResponse(erasure_id=erasure_id, state=state)


def _granted(request: account_pb2.GrantCreditsRequest) -> int:
    """The millicredits a grant asks for: `amount` (whole credits) or `amount_decimal`, not both."""
    if request.amount_decimal and request.amount:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "give the amount once: amount (whole credits) or amount_decimal, not both",
            field="amount_decimal",
        )
    if request.amount_decimal:
        return credits.parse(request.amount_decimal, "amount_decimal")
    return request.amount * credits.MILLI


# What gRPC lets in at once on the admin listener (a few named admins; each admin, and each
# source address without an admin's token, gets ADMIN_CALLS_PER_SOURCE of them).
ADMIN_CONCURRENT_RPCS = 16


async def start_admin_server(
    settings: AccountsSettings, servicer: AdminServicer, interceptors: list[grpc.aio.ServerInterceptor]
) -> tuple[grpc.aio.Server, int]:
    """The admin listener: TLS with the service's certificate (admins authenticate by token;
    no client certificate asked), plaintext only on loopback when no certificate is set."""
    from services.common.server import grpc_message_options
    from services.common.tls import is_loopback, server_credentials

    # Outermost, before anything reads a token: each source's share of the 16 calls gRPC
    # lets in, and a body that must come within ADMIN_REQUEST_ARRIVAL_S.
    def named_admin(metadata: tuple[tuple[str, str | bytes], ...]) -> str | None:
        tokens = [value for key, value in metadata if key == ADMIN_TOKEN_METADATA]
        if len(tokens) != 1:
            return None
        token = tokens[0].decode() if isinstance(tokens[0], bytes) else tokens[0]
        return servicer.principals.name_of(token) if token else None

    guard = ArrivalGuard(
        settings.admin_request_arrival_s,
        settings.admin_calls_per_source,
        ADMIN_CONCURRENT_RPCS // 2,  # strangers together: half, the rest stays for named admins
        named_admin,
    )
    server = grpc.aio.server(
        interceptors=[guard, *interceptors],
        options=grpc_message_options(settings),
        maximum_concurrent_rpcs=ADMIN_CONCURRENT_RPCS,
    )
    cutout_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    address = f"{settings.admin_host}:{settings.admin_port}"
    if settings.tls_cert_file and settings.tls_key_file:
        port = server.add_secure_port(address, server_credentials(settings.tls_cert_file, settings.tls_key_file))
    elif is_loopback(address):
        port = server.add_insecure_port(address)
    else:
        raise RuntimeError(f"refusing to serve administration in plaintext on {address}")
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    await server.start()
    if settings.admin_port_file:
        tmp = settings.admin_port_file.with_name(settings.admin_port_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(str(port))
        os.replace(tmp, settings.admin_port_file)
    log.info("administration listening on %s:%d", settings.admin_host, port)
    return server, port
