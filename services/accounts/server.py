"""The servicer cutout.v1.Accounts (internal, for the gateway); cutout.v1.Admin is in admin.py.

The database work is synchronous (sqlmodel), so each call runs it in a thread.
Logs carry reason codes and ids only: never an e-mail, a password or a key (and never
a database error's text, which can quote the parameters of its statement).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from sqlalchemy import Engine, Row

from cutout.v1 import accounts_pb2, accounts_pb2_grpc, retention_pb2, retention_pb2_grpc
from services.accounts import rights
from services.accounts.admin import AdminServicer, start_admin_server
from services.accounts.convert import access_pb, balance_pb, entry_pb, key_pb, profile_pb
from services.accounts.credentials import normalise_email
from services.accounts.db import MIGRATIONS, VERSION_TABLE, make_engine, migrate
from services.accounts.ledger import BalanceView, Ledger, Outcome, Reserved
from services.accounts.mail import Mailer, Outbox, SmtpRelay
from services.accounts.models import Account
from services.accounts.settings import AccountsSettings
from services.accounts.store import AccountStore, Caller
from services.common import credits, pages
from services.common.channels import channel_options
from services.common.errors import ServiceError, abort, processing_restricted
from services.common.limits import Backoff, Budget, Refused
from services.common.metadata import single_value
from services.common.server import PeriodicJob, ServiceSpec
from services.common.settings import API_KEY_METADATA, SOURCE_METADATA
from services.common.sql import MigrationsApplied, aware, compact_sqlite, database_errors, database_ready
from services.common.tasks import start_kept
from services.common.tls import channel_credentials, is_loopback
from services.common.wire import as_message

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTCOMES = {
    Outcome.NEW: accounts_pb2.RESERVE_OUTCOME_NEW,
    Outcome.DUPLICATE_HELD: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_HELD,
    Outcome.DUPLICATE_COMMITTED: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_COMMITTED,
    Outcome.DUPLICATE_RELEASED: accounts_pb2.RESERVE_OUTCOME_DUPLICATE_RELEASED,
    Outcome.REPLAY: accounts_pb2.RESERVE_OUTCOME_REPLAY,
}
PROFILE_FIELDS = ("display_name", "marketing_opt_in", "usage_stats_opt_out", "processing_restricted")
# Page sizes (docs/api/pages.md). The access log is paged by the gateway, which
# merges it with retention's; accounts serves at most a page of it per call.
KEYS_PAGE = pages.PageSize(default=100, maximum=1000)
LEDGER_PAGE = pages.PageSize(default=100, maximum=1000)
ACCESS_LOG_PAGE = pages.PageSize(default=1000, maximum=10000)
KEYS_LIST, LEDGER_LIST = "api_keys", "ledger"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (aware(moment) - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def profile_fields(request: accounts_pb2.AccountsUpdateProfileRequest) -> set[str]:
    """The profile fields an update changes (AIP-134): update_mask's paths ("*": all of them),
    else the older update_fields list; neither, or a name that is not a profile field, is
    INVALID_ARGUMENT."""
    field, names = "update_mask", list(request.update_mask.paths)
    if not names and request.update_fields:
        field, names = "update_fields", list(request.update_fields)
    if len(names) > len(PROFILE_FIELDS):  # each field at most once: no loop over a client's thousands
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'{field} has {len(names)} paths; name each of {", ".join(PROFILE_FIELDS)} at most once, or "*" for all',
            field=field,
        )
    if names == ["*"]:
        return set(PROFILE_FIELDS)
    unknown = [name for name in names if name not in PROFILE_FIELDS]
    if unknown or not names:
        shown = ", ".join(repr(name[:40]) for name in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        what = f"unknown path {shown}" if unknown else "no path"
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'{field} has {what}: name some of {", ".join(PROFILE_FIELDS)}, or "*" for all'
            " (the region is fixed; the e-mail changes with ChangeEmail)",
            field=field,
        )
    return set(names)


async def run_db(
    context: grpc.aio.ServicerContext,
    method: str,
    fn: Callable[..., T],
    *args: object,
    pool: PasswordPool | None = None,
) -> T:
    """Runs `fn` in a thread (of `pool` if given). Its errors end the call through the error
    boundary (services/common/errors.py; a database failure is DATABASE_UNAVAILABLE)."""
    if pool is not None:
        return await pool.run(fn, *args)
    return await asyncio.to_thread(fn, *args)


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
    """The one value of `name`: a credential sent twice is INVALID_ARGUMENT (services/common/metadata.py)."""
    return single_value(context.invocation_metadata(), name)


def caller_pb(caller: Caller) -> accounts_pb2.AuthenticateResponse:
    return accounts_pb2.AuthenticateResponse(
        account_id=caller.account_id,
        region=caller.region,
        plan=caller.plan,
        key_id=caller.key_id,
        processing_restricted=caller.processing_restricted,
        usage_stats_opt_out=caller.usage_stats_opt_out,
    )


def reserve_amount(request: accounts_pb2.ReserveRequest) -> int:
    """The ledger's unit; a caller that sends whole credits (the older field) still works."""
    return request.amount_millicredits or request.amount * credits.MILLI


def reserve_response(reserved: Reserved) -> accounts_pb2.ReserveResponse:
    return accounts_pb2.ReserveResponse(
        reservation_id=reserved.reservation_id,
        outcome=OUTCOMES[reserved.outcome],
        kept_result_id=reserved.kept_result_id,
        replays_left=reserved.replays_left,
    )


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(
        self, settings: AccountsSettings, store: AccountStore, ledger: Ledger, erasures: rights.Erasures
    ) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.erasures = erasures
        self._erasing: set[asyncio.Task[str]] = set()
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
        return caller_pb(caller)

    async def Reserve(
        self, request: accounts_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ReserveResponse:
        reserved = await run_db(
            context,
            "Reserve",
            self.ledger.reserve,
            request.account_id,
            request.idempotency_key,
            reserve_amount(request),
            request.request_hash,
            replay=request.replay,
        )
        return reserve_response(reserved)

    async def AuthorizeAndReserve(
        self, request: accounts_pb2.AuthorizeAndReserveRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AuthorizeAndReserveResponse:
        caller, reserved = await run_db(context, "AuthorizeAndReserve", self._authorize_and_reserve, request)
        return accounts_pb2.AuthorizeAndReserveResponse(
            caller=caller_pb(caller),
            reserved=reserve_response(reserved),
        )

    def _authorize_and_reserve(self, request: accounts_pb2.AuthorizeAndReserveRequest) -> tuple[Caller, Reserved]:
        """The key looked up as Authenticate does, then the reservation, on one worker thread."""
        caller = self.store.authenticate(request.api_key)
        if caller.processing_restricted:  # set since admission's answer: nothing is reserved
            raise processing_restricted()
        reserve = request.reserve
        if reserve.account_id != caller.account_id:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "the reservation names another account than the API key's; authenticate again",
                reason="ACCOUNT_MISMATCH",
            )
        reserved = self.ledger.reserve(
            caller.account_id,
            reserve.idempotency_key,
            reserve_amount(reserve),
            reserve.request_hash,
            replay=reserve.replay,
        )
        return caller, reserved

    async def Commit(
        self, request: accounts_pb2.CommitRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.CommitResponse:
        state = await run_db(
            context, "Commit", self.ledger.commit, request.account_id, request.reservation_id, request.kept_result_id
        )
        return accounts_pb2.CommitResponse(state=state)

    async def Release(
        self, request: accounts_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.ReleaseResponse:
        release = functools.partial(self.ledger.release, undelivered=request.undelivered)
        state = await run_db(context, "Release", release, request.account_id, request.reservation_id)
        return accounts_pb2.ReleaseResponse(state=state)

    # -- account calls (the caller's key comes in the forwarded metadata) -----------

    async def SignUp(
        self, request: accounts_pb2.AccountsSignUpRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsSignUpResponse:
        answer = await run_db(
            context,
            "SignUp",
            functools.partial(
                self.store.sign_up,
                email=request.email,
                password=request.password,
                display_name=request.display_name,
                region=request.region,
                age_confirmed=request.age_confirmed,
                marketing_opt_in=request.marketing_opt_in,
                source=metadata_value(context, SOURCE_METADATA),
            ),
            pool=self.passwords,
        )
        # The same answer whether or not the address has an account (the e-mail tells).
        return accounts_pb2.AccountsSignUpResponse(
            verification_required=True,
            free_credits=credits.whole(answer.free_millicredits),
            free_credits_decimal=credits.text(answer.free_millicredits),
            free_credits_note=answer.note,
        )

    async def VerifySignUp(
        self, request: accounts_pb2.AccountsVerifySignUpRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsVerifySignUpResponse:
        account, api_key, key = await run_db(
            context,
            "VerifySignUp",
            _checked,
            self.logins,
            normalise_email(request.email),
            functools.partial(
                self.store.verify_sign_up, request.email, request.password, request.code, request.key_name
            ),
            pool=self.passwords,
        )
        balance = await run_db(context, "VerifySignUp", self.ledger.balance, account.id)
        log.info("account created: %s", account.id)
        return accounts_pb2.AccountsVerifySignUpResponse(
            profile=profile_pb(account), balance=balance_pb(balance), api_key=api_key, key=key_pb(key)
        )

    async def CreateApiKey(
        self, request: accounts_pb2.AccountsCreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsCreateApiKeyResponse:
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
        return accounts_pb2.AccountsCreateApiKeyResponse(api_key=api_key, key=key_pb(key))

    async def ListApiKeys(
        self, request: accounts_pb2.AccountsListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsListApiKeysResponse:
        caller = await self._caller(context, "ListApiKeys")
        size = KEYS_PAGE.of(request.page_size)
        position = pages.decode(request.page_token, caller.account_id, KEYS_LIST)
        after = None
        if position is not None:
            after = (pages.time_field(position, "t"), pages.field(position, "id", str))
        keys = await run_db(context, "ListApiKeys", self.store.list_keys, caller.account_id, size + 1, after)
        response = accounts_pb2.AccountsListApiKeysResponse(keys=[key_pb(key) for key in keys[:size]])
        if len(keys) > size:  # more than a page: the next one starts after the last key shown
            last = keys[size - 1]
            response.next_page_token = pages.encode(
                caller.account_id, KEYS_LIST, {"t": to_micros(last.created_at), "id": last.id}
            )
        return response

    async def RevokeApiKey(
        self, request: accounts_pb2.AccountsRevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsRevokeApiKeyResponse:
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
        return accounts_pb2.AccountsRevokeApiKeyResponse(key=key_pb(key))

    async def GetBalance(
        self, request: accounts_pb2.AccountsGetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsGetBalanceResponse:
        caller = await self._caller(context, "GetBalance")
        balance = await run_db(context, "GetBalance", self.ledger.balance, caller.account_id)
        return as_message(accounts_pb2.AccountsGetBalanceResponse, balance_pb(balance))

    async def ListLedger(
        self, request: accounts_pb2.AccountsListLedgerRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsListLedgerResponse:
        caller = await self._caller(context, "ListLedger")
        size = LEDGER_PAGE.of(request.page_size, request.limit)
        before_seq = pages.field(pages.decode(request.page_token, caller.account_id, LEDGER_LIST), "seq", int) or 0

        def read() -> tuple[list[tuple[Row[Any], str]], BalanceView]:
            rights.record_access(self.store.engine, caller.account_id, "owner", "read_ledger")
            return self.ledger.entries(caller.account_id, size + 1, before_seq)

        entries, balance = await run_db(context, "ListLedger", read)
        response = accounts_pb2.AccountsListLedgerResponse(
            entries=[entry_pb(entry, key) for entry, key in entries[:size]], balance=balance_pb(balance)
        )
        if len(entries) > size:  # more than a page: the next one starts after the last entry shown
            response.next_page_token = pages.encode(caller.account_id, LEDGER_LIST, {"seq": entries[size - 1][0].seq})
        return response

    async def GetProfile(
        self, request: accounts_pb2.AccountsGetProfileRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsGetProfileResponse:
        caller = await self._caller(context, "GetProfile")

        def read() -> Account:
            rights.record_access(self.store.engine, caller.account_id, "owner", "read_profile")
            return self.store.get(caller.account_id)

        return as_message(
            accounts_pb2.AccountsGetProfileResponse, profile_pb(await run_db(context, "GetProfile", read))
        )

    async def UpdateProfile(
        self, request: accounts_pb2.AccountsUpdateProfileRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsUpdateProfileResponse:
        caller = await self._caller(context, "UpdateProfile")
        fields = profile_fields(request)

        def update() -> Account:
            account = self.store.update_profile(
                caller.account_id,
                display_name=request.display_name if "display_name" in fields else None,
                marketing_opt_in=request.marketing_opt_in if "marketing_opt_in" in fields else None,
                usage_stats_opt_out=request.usage_stats_opt_out if "usage_stats_opt_out" in fields else None,
                processing_restricted=request.processing_restricted if "processing_restricted" in fields else None,
            )
            if "processing_restricted" in fields:
                action = "restrict" if request.processing_restricted else "lift_restriction"
                rights.record_access(self.store.engine, caller.account_id, "owner", action)
            return account

        return as_message(
            accounts_pb2.AccountsUpdateProfileResponse, profile_pb(await run_db(context, "UpdateProfile", update))
        )

    async def ChangePassword(
        self, request: accounts_pb2.AccountsChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsChangePasswordResponse:
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
        return accounts_pb2.AccountsChangePasswordResponse()

    # -- the user's rights (services/accounts/rights.py) ------------------------------

    async def _password(self, context: grpc.aio.ServicerContext, method: str, caller: Caller, password: str) -> None:
        await run_db(
            context,
            method,
            _checked,
            self.logins,
            caller.account_id,
            functools.partial(self.store.check_password, caller.account_id, password),
            pool=self.passwords,
        )

    async def ChangeEmail(
        self, request: accounts_pb2.AccountsChangeEmailRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsChangeEmailResponse:
        caller = await self._caller(context, "ChangeEmail")
        await self._password(context, "ChangeEmail", caller, request.password)
        if not request.code:  # step 1: a code to the new address; nothing changes yet
            await run_db(context, "ChangeEmail", self.store.request_email_change, caller.account_id, request.new_email)
            account = await run_db(context, "ChangeEmail", self.store.get, caller.account_id)
            answer = as_message(accounts_pb2.AccountsChangeEmailResponse, profile_pb(account))
            answer.email_verification_required = True
            return answer
        account, old = await run_db(
            context,
            "ChangeEmail",
            self.store.confirm_email_change,
            caller.account_id,
            request.new_email,
            request.code,
        )
        # The old address goes from everywhere: the mail kept for it, and the database file.
        await run_db(context, "ChangeEmail", self.erasures.forget_mail, old)
        await run_db(context, "ChangeEmail", compact_sqlite, self.store.engine)
        log.info("e-mail corrected: %s", caller.account_id)
        return as_message(accounts_pb2.AccountsChangeEmailResponse, profile_pb(account))

    async def DeleteAccount(
        self, request: accounts_pb2.AccountsDeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsDeleteAccountResponse:
        caller = await self._caller(context, "DeleteAccount")
        await self._password(context, "DeleteAccount", caller, request.password)
        requested = await run_db(context, "DeleteAccount", self.erasures.request, caller.account_id, "owner")
        state = await self.run_erasure(requested.erasure_id)
        return accounts_pb2.AccountsDeleteAccountResponse(erasure_id=requested.erasure_id, state=state)

    async def run_erasure(self, erasure_id: str) -> str:
        """Runs the rest of an erasure, waiting up to ERASURE_WAIT_S for it: "done", or
        "pending" (it goes on, or the resume job finishes it)."""

        async def run() -> str:
            try:
                return await asyncio.to_thread(self.erasures.run, erasure_id)
            except Exception as error:  # retention down, a crash: the resume job finishes it
                log.warning("erasure %s pending: %s", erasure_id, type(error).__name__)
                return rights.PENDING

        task = start_kept(self._erasing, run())
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.erasure_wait_s)
        except TimeoutError:
            return rights.PENDING

    async def ExportAccount(
        self, request: accounts_pb2.AccountsExportAccountRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsExportAccountResponse:
        caller = await self._caller(context, "ExportAccount")

        def gather() -> accounts_pb2.AccountsExportAccountResponse:
            rights.record_access(self.store.engine, caller.account_id, "owner", "export")
            account = self.store.get(caller.account_id)
            entries, balance = self.ledger.entries(caller.account_id, limit=10**9)
            return accounts_pb2.AccountsExportAccountResponse(
                profile=profile_pb(account),
                age_confirmed=account.age_confirmed,
                keys=[key_pb(key) for key in self.store.list_keys(caller.account_id)],
                ledger=[entry_pb(entry, key) for entry, key in entries],
                balance=balance_pb(balance),
                access_log=[access_pb(entry) for entry in rights.access_log(self.store.engine, caller.account_id)],
            )

        return await run_db(context, "ExportAccount", gather)

    async def ListAccessLog(
        self, request: accounts_pb2.AccountsListAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> accounts_pb2.AccountsListAccessLogResponse:
        caller = await self._caller(context, "ListAccessLog")
        entries = await run_db(
            context,
            "ListAccessLog",
            rights.access_log,
            self.store.engine,
            caller.account_id,
            ACCESS_LOG_PAGE.of(0, request.limit),
            request.before_id,
        )
        return accounts_pb2.AccountsListAccessLogResponse(
            entries=[access_pb(entry) for entry in entries], entry_ids=[entry.id or 0 for entry in entries]
        )


# -- the service -----------------------------------------------------------------------


def mailer(settings: AccountsSettings) -> Mailer:
    """The region's SMTP relay if one is set, else the outbox folder."""
    if not settings.smtp_host:
        return Outbox(settings.mail_outbox_dir)
    return SmtpRelay(
        settings.smtp_host,
        settings.smtp_port,
        sender=settings.mail_from,
        ca_file=settings.smtp_ca_file,
        username=settings.smtp_username,
        password=settings.smtp_password_file.read_text().strip() if settings.smtp_password_file else "",
    )


def sweep_all(ledger: Ledger, store: AccountStore, settings: AccountsSettings) -> str:
    """One pass of the schedule (docs/privacy/retention.md); a report if anything went."""
    settled = ledger.sweep()
    compacted, deleted = ledger.compact(
        timedelta(hours=settings.idempotency_hours), timedelta(days=settings.released_reservation_days)
    )
    done = {
        "accounts settled (lapsed holds released, expired credits written off)": settled,
        "reservations compacted (idempotency key and fingerprint dropped)": compacted,
        "released reservations deleted": deleted,
        **store.sweep(),
    }
    return ", ".join(f"{what}: {count}" for what, count in done.items() if count)


def open_database(settings: AccountsSettings) -> Engine:
    engine = make_engine(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    if settings.migrate_on_start:
        migrate(engine)
    return engine


def retention_eraser(settings: AccountsSettings) -> tuple[rights.EraseRetention, Callable[[], None]]:
    """Erases an account in retention (a blocking call, for the saga's thread), and a closer."""
    if not settings.retention_target:
        log.warning("no CUTOUT_ACCOUNTS_RETENTION_TARGET: erasures will not reach retention and stay pending")

        def unreachable(account_id: str) -> None:
            raise RuntimeError("no retention target configured")

        return unreachable, lambda: None
    if settings.mesh_ca_file:
        credentials = channel_credentials(settings.mesh_ca_file, settings.mesh_cert_file, settings.mesh_key_file)
        channel = grpc.secure_channel(settings.retention_target, credentials, options=channel_options())
    elif is_loopback(settings.retention_target):
        channel = grpc.insecure_channel(settings.retention_target, options=channel_options())
    else:
        raise ValueError(
            f"no mesh certificate configured (MESH_CA_FILE): plaintext to {settings.retention_target} refused"
        )
    stub = retention_pb2_grpc.RetentionStub(channel)

    def erase(account_id: str) -> None:
        stub.EraseAccount(
            retention_pb2.EraseAccountRequest(account_id=account_id), timeout=settings.retention_timeout_s
        )

    return erase, channel.close


def build(settings: AccountsSettings) -> ServiceSpec:
    engine = open_database(settings)
    ledger = Ledger(
        engine, hold_timeout=timedelta(seconds=settings.hold_timeout_s), replays_per_key=settings.replays_per_key
    )
    store = AccountStore(
        engine,
        ledger,
        region=settings.region,
        region_endpoints=settings.region_endpoints,
        plan=settings.default_plan,
        scrypt_n=settings.scrypt_n,
        outbox=mailer(settings),
        free_millicredits=credits.to_milli(settings.signup_credits),
        credit_lifetime=timedelta(days=settings.signup_credit_days),
        grants_per_source=settings.free_grants_per_source,
        grant_window=timedelta(hours=settings.free_grant_window_h),
        code_lifetime=timedelta(hours=settings.signup_code_hours),
        revoked_key_lifetime=timedelta(days=settings.revoked_key_days),
        mail_lifetime=timedelta(hours=settings.mail_outbox_hours),
    )
    erase_retention, close_retention = retention_eraser(settings)
    erasures = rights.Erasures(engine, erase_retention, forget_mail=store.outbox.erase)
    accounts = AccountsServicer(settings, store, ledger, erasures)
    migrations_applied = MigrationsApplied(engine, MIGRATIONS, version_table=VERSION_TABLE)
    admin = AdminServicer(settings, store, ledger, engine, erasures, accounts.run_erasure)
    admin_server: list[grpc.aio.Server] = []

    def sweep() -> str:
        return sweep_all(ledger, store, settings)

    def resume_erasures() -> str:
        finished = erasures.resume()
        return f"finished {finished} interrupted erasures" if finished else ""

    async def start_admin() -> None:
        server, _ = await start_admin_server(settings, admin, [])
        admin_server.append(server)

    async def close() -> None:
        for server in admin_server:
            await server.stop(settings.shutdown_grace_s)
        close_retention()
        engine.dispose()

    def register(server: grpc.aio.Server) -> None:
        accounts_pb2_grpc.add_AccountsServicer_to_server(accounts, server)

    return ServiceSpec(
        service_names=[accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name],
        register=register,
        ready=lambda: database_ready(engine, migrations_applied),
        close=close,
        on_start=start_admin,
        jobs=[
            PeriodicJob("sweep", settings.sweep_interval_s, sweep),
            PeriodicJob("erasures", settings.erasure_resume_interval_s, resume_erasures),
        ],
        known_errors=database_errors("accounts"),
    )
