"""The servicers cutout.v1.Accounts (internal, for the gateway) and cutout.v1.Admin.

The database work is synchronous (sqlmodel), so each call runs it in a thread.
Logs carry reason codes and ids only: never an e-mail, a password or a key (and never
a database error's text, which can quote the parameters of its statement).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from cutout.v1 import account_pb2, accounts_pb2, accounts_pb2_grpc, cutout_pb2, cutout_pb2_grpc
from services.accounts.credentials import normalise_email
from services.accounts.db import make_engine, migrate
from services.accounts.ledger import BalanceView, Ledger, Outcome, Reserved, utc_now
from services.accounts.models import Account, ApiKey
from services.accounts.settings import AccountsSettings
from services.accounts.store import AccountStore, Caller
from services.common.errors import ServiceError, abort
from services.common.limits import Backoff, Budget, Refused
from services.common.server import PeriodicJob, ServiceSpec
from services.common.settings import ADMIN_TOKEN_METADATA, API_KEY_METADATA
from services.common.sql import database_ready

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTCOMES = {
    Outcome.NEW: accounts_pb2.RESERVE_OUTCOME_NEW,
    Outcome.DUPLICATE_HELD: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_HELD,
    Outcome.DUPLICATE_COMMITTED: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_COMMITTED,
    Outcome.DUPLICATE_RELEASED: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_RELEASED,
}
PROFILE_FIELDS = ("display_name", "marketing_opt_in")


async def run_db(
    context: grpc.aio.ServicerContext,
    method: str,
    fn: Callable[..., T],
    *args: object,
    pool: PasswordPool | None = None,
) -> T:
    """Runs `fn` in a thread (of `pool` if given); its ServiceError (or a database failure) ends the call."""
    try:
        if pool is not None:
            return await pool.run(fn, *args)
        return await asyncio.to_thread(fn, *args)
    except ServiceError as error:
        log.info("%s refused: %s (%s)", method, error.code.name, error.reason or "")
        await abort(context, error)
    except SQLAlchemyError as error:
        log.error("%s: database error %s", method, type(error).__name__)
        await abort(
            context,
            ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "the accounts database is unavailable; retry shortly",
                reason="DATABASE_UNAVAILABLE",
            ),
        )


def _checked(backoff: Backoff, key: str, check: Callable[[], T]) -> T:
    """Runs a password check under `key`'s backoff (in the password thread)."""
    try:
        backoff.check(key)
    except Refused as error:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many wrong passwords; retry in {error.retry_after_s:.0f}s",
            reason="LOGIN_THROTTLED",
            quota_subject=error.what,
            retry_after_s=error.retry_after_s,
        ) from None
    try:
        result = check()
    except ServiceError as error:
        if error.code == grpc.StatusCode.UNAUTHENTICATED:
            backoff.failed(key)
        raise
    backoff.succeeded(key)
    return result


class PasswordPool:
    """Threads of their own for the calls that hash a password (scrypt: slow on purpose),
    so that a flood of logins never queues the ledger's reserve and commit behind it;
    beyond `queue` such calls waiting or running, more are refused at once."""

    def __init__(self, workers: int, queue: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="passwords")
        self.budget = Budget(queue, "password checks in progress", retry_after_s=1.0)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            self.budget.acquire()
        except Refused as error:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many sign-ups and logins in progress; retry in a second",
                reason="PASSWORD_CHECKS_BUSY",
                quota_subject=error.what,
                retry_after_s=error.retry_after_s,
            ) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))
        finally:
            self.budget.release()


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, settings: AccountsSettings, store: AccountStore, ledger: Ledger) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.passwords = PasswordPool(settings.password_workers, settings.password_queue)
        # Wrong passwords per account (and per e-mail, known or not, so that the answer
        # says nothing about which exist): backoff after LOGIN_FAILURES_FREE in a row.
        self.logins = Backoff(settings.login_failures_free, settings.login_backoff_max_s, "failed logins")

    async def _caller(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        return await run_db(context, method, self.store.authenticate, metadata_value(context, API_KEY_METADATA))

    # -- for RemoveBackground -------------------------------------------------------

    async def Authenticate(
        self, request: accounts_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AuthenticateResponse:
        caller = await run_db(context, "Authenticate", self.store.authenticate, request.api_key)
        return accounts_pb2.AuthenticateResponse(
            account_id=caller.account_id, region=caller.region, plan=caller.plan, key_id=caller.key_id
        )

    async def Reserve(
        self, request: accounts_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ReserveResponse:
        reserved = await run_db(
            context,
            "Reserve",
            self.ledger.reserve,
            request.account_id,
            request.idempotency_key,
            request.amount,
            request.request_hash,
        )
        return accounts_pb2.ReserveResponse(reservation_id=reserved.reservation_id, outcome=OUTCOMES[reserved.outcome])

    async def AuthorizeAndReserve(
        self, request: accounts_pb2.AuthorizeAndReserveRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AuthorizeAndReserveResponse:
        caller, reserved = await run_db(context, "AuthorizeAndReserve", self._authorize_and_reserve, request)
        return accounts_pb2.AuthorizeAndReserveResponse(
            caller=accounts_pb2.AuthenticateResponse(
                account_id=caller.account_id, region=caller.region, plan=caller.plan, key_id=caller.key_id
            ),
            reserved=accounts_pb2.ReserveResponse(
                reservation_id=reserved.reservation_id, outcome=OUTCOMES[reserved.outcome]
            ),
        )

    def _authorize_and_reserve(self, request: accounts_pb2.AuthorizeAndReserveRequest) -> tuple[Caller, Reserved]:
        """The key looked up as Authenticate does, then the reservation, on one worker thread."""
        caller = self.store.authenticate(request.api_key)
        reserve = request.reserve
        if reserve.account_id != caller.account_id:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "the reservation names another account than the API key's; authenticate again",
                reason="ACCOUNT_MISMATCH",
            )
        reserved = self.ledger.reserve(caller.account_id, reserve.idempotency_key, reserve.amount, reserve.request_hash)
        return caller, reserved

    async def Commit(
        self, request: accounts_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.SettleResponse:
        state = await run_db(context, "Commit", self.ledger.commit, request.account_id, request.reservation_id)
        return accounts_pb2.SettleResponse(state=state)

    async def Release(
        self, request: accounts_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.SettleResponse:
        state = await run_db(context, "Release", self.ledger.release, request.account_id, request.reservation_id)
        return accounts_pb2.SettleResponse(state=state)

    # -- account calls (the caller's key comes in the forwarded metadata) -----------

    async def SignUp(
        self, request: account_pb2.SignUpRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.SignUpResponse:
        def sign_up() -> tuple[Account, BalanceView]:
            account = self.store.sign_up(
                email=request.email,
                password=request.password,
                display_name=request.display_name,
                region=request.region,
                age_confirmed=request.age_confirmed,
                marketing_opt_in=request.marketing_opt_in,
                signup_credits=self.settings.signup_credits,
                credit_days=self.settings.signup_credit_days,
            )
            return account, self.ledger.balance(account.id)

        account, balance = await run_db(context, "SignUp", sign_up, pool=self.passwords)
        log.info("account created: %s", account.id)
        return account_pb2.SignUpResponse(profile=profile_pb(account), balance=balance_pb(balance))

    async def CreateApiKey(
        self, request: account_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.CreateApiKeyResponse:
        if metadata_value(context, API_KEY_METADATA):
            account_id = (await self._caller(context, "CreateApiKey")).account_id
            await run_db(
                context,
                "CreateApiKey",
                _checked,
                self.logins,
                account_id,
                functools.partial(self.store.check_password, account_id, request.password),
                pool=self.passwords,
            )
        elif request.email and request.password:
            login = await run_db(
                context,
                "CreateApiKey",
                _checked,
                self.logins,
                normalise_email(request.email),
                functools.partial(self.store.login, request.email, request.password),
                pool=self.passwords,
            )
            account_id = login.id
        else:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "creating a key needs your e-mail and password, or a key (`x-api-key` metadata) and your password",
                    reason="CREDENTIALS_MISSING",
                ),
            )
        api_key, key = await run_db(context, "CreateApiKey", self.store.create_key, account_id, request.name)
        log.info("api key created: %s", key.id)
        return account_pb2.CreateApiKeyResponse(api_key=api_key, key=key_pb(key))

    async def ListApiKeys(
        self, request: account_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ListApiKeysResponse:
        caller = await self._caller(context, "ListApiKeys")
        keys = await run_db(context, "ListApiKeys", self.store.list_keys, caller.account_id)
        return account_pb2.ListApiKeysResponse(keys=[key_pb(key) for key in keys])

    async def RevokeApiKey(
        self, request: account_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.RevokeApiKeyResponse:
        caller = await self._caller(context, "RevokeApiKey")
        if request.id != caller.key_id:  # a key may revoke itself; any other needs the password
            await run_db(
                context,
                "RevokeApiKey",
                _checked,
                self.logins,
                caller.account_id,
                functools.partial(self.store.check_password, caller.account_id, request.password),
                pool=self.passwords,
            )
        key = await run_db(context, "RevokeApiKey", self.store.revoke_key, caller.account_id, request.id)
        log.info("api key revoked: %s", key.id)
        return account_pb2.RevokeApiKeyResponse(key=key_pb(key))

    async def GetBalance(
        self, request: account_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Balance:
        caller = await self._caller(context, "GetBalance")
        return balance_pb(await run_db(context, "GetBalance", self.ledger.balance, caller.account_id))

    async def ListLedger(
        self, request: account_pb2.ListLedgerRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ListLedgerResponse:
        caller = await self._caller(context, "ListLedger")
        limit = min(request.limit or 100, 1000)
        entries, balance = await run_db(context, "ListLedger", self.ledger.entries, caller.account_id, limit)
        return account_pb2.ListLedgerResponse(
            entries=[entry_pb(entry, key) for entry, key in entries], balance=balance_pb(balance)
        )

    async def GetProfile(
        self, request: account_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Profile:
        caller = await self._caller(context, "GetProfile")
        return profile_pb(await run_db(context, "GetProfile", self.store.get, caller.account_id))

    async def UpdateProfile(
        self, request: account_pb2.UpdateProfileRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.Profile:
        caller = await self._caller(context, "UpdateProfile")
        unknown = [name for name in request.update_fields if name not in PROFILE_FIELDS]
        if unknown or not request.update_fields:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"update_fields must name some of {', '.join(PROFILE_FIELDS)} (the region is fixed)",
                    field="update_fields",
                ),
            )
        fields = set(request.update_fields)

        def update() -> Account:
            return self.store.update_profile(
                caller.account_id,
                display_name=request.display_name if "display_name" in fields else None,
                marketing_opt_in=request.marketing_opt_in if "marketing_opt_in" in fields else None,
            )

        return profile_pb(await run_db(context, "UpdateProfile", update))

    async def ChangePassword(
        self, request: account_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.ChangePasswordResponse:
        caller = await self._caller(context, "ChangePassword")
        await run_db(
            context,
            "ChangePassword",
            _checked,
            self.logins,
            caller.account_id,
            functools.partial(
                self.store.change_password, caller.account_id, request.current_password, request.new_password
            ),
            pool=self.passwords,
        )
        log.info("password changed: %s", caller.account_id)
        return account_pb2.ChangePasswordResponse()


class AdminServicer(cutout_pb2_grpc.AdminServicer):
    """Authorised by the admin token only; an API key means nothing here."""

    def __init__(self, settings: AccountsSettings, store: AccountStore, ledger: Ledger, token: str) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self._token = token.encode()

    async def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        if not self._token:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "administration is disabled: no CUTOUT_ACCOUNTS_ADMIN_TOKEN or _ADMIN_TOKEN_FILE is set",
                    reason="ADMIN_DISABLED",
                ),
            )
        given = metadata_value(context, ADMIN_TOKEN_METADATA).encode()
        if not given or not hmac.compare_digest(given, self._token):
            log.warning("admin call refused: %s", "no token" if not given else "wrong token")
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "administration needs the admin token in the `x-admin-token` metadata",
                    reason="ADMIN_TOKEN_INVALID",
                ),
            )

    async def GrantCredits(
        self, request: account_pb2.GrantCreditsRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.GrantCreditsResponse:
        await self._authorise(context)
        days = request.expires_in_days or self.settings.grant_credit_days
        source = request.source or "admin"

        def grant() -> tuple[str, BalanceView]:
            grant_id = self.ledger.grant(request.account_id, request.amount, source, utc_now() + timedelta(days=days))
            return grant_id, self.ledger.balance(request.account_id)

        grant_id, balance = await run_db(context, "GrantCredits", grant)
        log.info("granted %d credits (%s) to %s", request.amount, source, request.account_id)
        return account_pb2.GrantCreditsResponse(grant_id=grant_id, balance=balance_pb(balance))

    async def LookupAccount(
        self, request: account_pb2.LookupAccountRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.LookupAccountResponse:
        await self._authorise(context)
        if bool(request.account_id) == bool(request.email):
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of account_id or email", field="account_id"
                ),
            )

        def lookup() -> tuple[Account, BalanceView, int]:
            account = (
                self.store.get(request.account_id) if request.account_id else self.store.find_by_email(request.email)
            )
            return account, self.ledger.balance(account.id), self.store.count_active_keys(account.id)

        account, balance, keys = await run_db(context, "LookupAccount", lookup)
        # Access to personal data is logged: who (the admin), what (which account), when (the log time).
        log.info("admin looked up account %s", account.id)
        return account_pb2.LookupAccountResponse(
            profile=profile_pb(account), balance=balance_pb(balance), active_api_keys=keys
        )


# -- proto conversions ---------------------------------------------------------------


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def profile_pb(account: Account) -> account_pb2.Profile:
    return account_pb2.Profile(
        account_id=account.id,
        email=account.email,
        display_name=account.display_name,
        region=account.region,
        plan=account.plan,
        marketing_opt_in=account.marketing_opt_in,
        created_at=timestamp(account.created_at),
    )


def balance_pb(balance: BalanceView) -> account_pb2.Balance:
    return account_pb2.Balance(
        available=balance.available,
        held=balance.held,
        next_expiry=timestamp(balance.next_expiry),
        expiring_next=balance.expiring_next,
    )


def key_pb(key: ApiKey) -> account_pb2.ApiKey:
    return account_pb2.ApiKey(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=timestamp(key.created_at),
        last_used_at=timestamp(key.last_used_at),
        revoked_at=timestamp(key.revoked_at),
    )


def entry_pb(entry: Row[Any], idempotency_key: str) -> account_pb2.LedgerEntry:
    return account_pb2.LedgerEntry(
        id=str(entry.seq),
        kind=entry.kind,
        amount=entry.amount,
        held=entry.held,
        reservation_id=entry.reservation_id or "",
        grant_id=entry.grant_id or "",
        idempotency_key=idempotency_key,
        created_at=timestamp(entry.created_at),
    )


# -- the service -----------------------------------------------------------------------


def admin_token(settings: AccountsSettings) -> str:
    if settings.admin_token_file is not None:
        return settings.admin_token_file.read_text().strip()
    return settings.admin_token.strip()


def open_database(settings: AccountsSettings) -> Engine:
    engine = make_engine(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    migrate(engine)
    return engine


def build(settings: AccountsSettings) -> ServiceSpec:
    engine = open_database(settings)
    ledger = Ledger(engine, hold_timeout=timedelta(seconds=settings.hold_timeout_s))
    store = AccountStore(
        engine, ledger, regions=settings.regions, plan=settings.default_plan, scrypt_n=settings.scrypt_n
    )
    accounts = AccountsServicer(settings, store, ledger)
    admin = AdminServicer(settings, store, ledger, admin_token(settings))

    def sweep() -> str:
        settled = ledger.sweep()
        return f"settled {settled} accounts (lapsed holds released, expired credits written off)" if settled else ""

    async def close() -> None:
        engine.dispose()

    def register(server: grpc.aio.Server) -> None:
        accounts_pb2_grpc.add_AccountsServicer_to_server(accounts, server)
        cutout_pb2_grpc.add_AdminServicer_to_server(admin, server)

    return ServiceSpec(
        service_names=[
            accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name,
            cutout_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        ],
        register=register,
        ready=lambda: database_ready(engine),
        close=close,
        jobs=[PeriodicJob("sweep", settings.sweep_interval_s, sweep)],
    )
