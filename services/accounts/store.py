"""Accounts, API keys and profiles (synchronous; the servicer calls it in a thread).

Errors never say which of e-mail or password was wrong, and nothing here logs an
e-mail, a password or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy import Engine, and_, delete, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.accounts import credentials
from services.accounts.ledger import Clock, Ledger, utc_now
from services.accounts.mail import CODE_HEADER, Mailer, MailUnavailable
from services.accounts.models import AccessLogEntry, Account, ApiKey, EmailChange, PendingSignUp, SignUpSource
from services.common.errors import ServiceError, invalid_argument
from services.common.sql import aware

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MAX_KEYS_PER_ACCOUNT = 50
# last_used_at is written at most this often per key (one write per request would
# serialise every request on the account's database lock).
LAST_USED_RESOLUTION = timedelta(minutes=1)

NO_KEY_MESSAGE = (
    "this call needs an API key in the `x-api-key` metadata; create one with `cutout keys create` "
    "(or CreateApiKey with your e-mail and password)"
)
WRONG_LOGIN_MESSAGE = "e-mail or password is wrong"


@dataclass(frozen=True)
class SignUpAnswer:
    free_millicredits: int  # the ledger's unit (services/common/credits.py)
    note: str  # why no free credits, when none


@dataclass(frozen=True)
class Caller:
    account_id: str
    key_id: str
    region: str
    plan: str
    processing_restricted: bool = False
    usage_stats_opt_out: bool = False


def unauthenticated(message: str, reason: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message, reason=reason)


# Sign-ups of one address waiting for their codes at once; past this, no new code is made.
PENDING_PER_ADDRESS = 3


def verification_failed() -> ServiceError:
    return unauthenticated(
        "the code, e-mail or password is wrong, or the code expired; sign up again for a new code",
        "VERIFICATION_FAILED",
    )


class AccountStore:
    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        region: str,
        region_endpoints: dict[str, str],
        plan: str,
        scrypt_n: int,
        outbox: Mailer,
        free_millicredits: int = 0,
        credit_lifetime: timedelta = timedelta(days=30),
        grants_per_source: int = 0,
        grant_window: timedelta = timedelta(hours=24),
        code_lifetime: timedelta = timedelta(hours=24),
        revoked_key_lifetime: timedelta = timedelta(days=30),
        mail_lifetime: timedelta = timedelta(hours=24),
        clock: Clock = utc_now,
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.region = region
        self.region_endpoints = region_endpoints
        self.plan = plan
        self.scrypt_n = scrypt_n
        self.outbox = outbox
        self.free_millicredits = free_millicredits
        self.credit_lifetime = credit_lifetime
        self.grants_per_source = grants_per_source
        self.grant_window = grant_window
        self.code_lifetime = code_lifetime
        self.revoked_key_lifetime = revoked_key_lifetime
        self.mail_lifetime = mail_lifetime
        self.clock = clock
        self._dummy_hash = credentials.dummy_password_hash(scrypt_n)

    # -- sign-up and login ----------------------------------------------------------

    def sign_up(
        self,
        *,
        email: str,
        password: str,
        display_name: str,
        region: str,
        age_confirmed: bool,
        marketing_opt_in: bool,
        source: str,
    ) -> SignUpAnswer:
        """Asks for an account; the same answer whether or not the e-mail has one.

        Whatever the address, the same work runs (checks, one scrypt hash, the free-grant
        count of the source, one e-mail): a new address gets a code (VerifySignUp opens the
        account), one with an account gets a notice instead, and the answer is the same.
        """
        email = _check_email(email)
        _check_password(password, "password")
        _check_display_name(display_name)
        _check_strength(password, "password", [email, email.split("@")[0], display_name])
        self.check_region(region)
        if not age_confirmed:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "you must be at least 13 years old to sign up; confirm it with age_confirmed",
                field="age_confirmed",
                reason="AGE_NOT_CONFIRMED",
            )
        password_hash = credentials.hash_password(password, n=self.scrypt_n)
        code = credentials.new_signup_code()
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            credits, note = self._free_credits(session, source, now)
            exists = session.exec(select(Account.id).where(Account.email == email)).first() is not None
            waiting = session.exec(
                select(func.count())
                .select_from(PendingSignUp)
                .where(PendingSignUp.email == email, PendingSignUp.expires_at > now)
            ).one()
            # Signed up again before verifying: the earlier codes stay valid (a stranger's
            # sign-up of your address must not void yours), up to a few per address.
            crowded = not exists and waiting >= PENDING_PER_ADDRESS
            if not exists and not crowded:
                session.add(
                    PendingSignUp(
                        email=email,
                        display_name=display_name.strip(),
                        password_hash=password_hash,
                        region=region,
                        marketing_opt_in=marketing_opt_in,
                        code_hash=credentials.hash_api_key(code),
                        free_millicredits=credits,
                        created_at=now,
                        expires_at=now + self.code_lifetime,
                    )
                )
        try:
            self._send_sign_up_mail(email, code, exists, crowded)
        except MailUnavailable:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "the e-mail with your code could not be sent; sign up again in a minute",
                reason="MAIL_UNAVAILABLE",
            ) from None
        return SignUpAnswer(free_millicredits=credits, note=note)

    def _send_sign_up_mail(self, email: str, code: str, exists: bool, crowded: bool = False) -> None:
        """A code to a new address, a notice to one with an account (or with as many sign-ups
        waiting as it may have): one e-mail either way."""
        if crowded:
            self.outbox.send(
                email,
                "Several Cutout sign-ups are waiting for your address",
                f"{PENDING_PER_ADDRESS} sign-ups with your address are waiting for their codes, so no new code "
                "was made. Use a code you already have, or wait until they expire; if these were not you, "
                "ignore them.",
            )
        elif exists:
            self.outbox.send(
                email,
                "Someone asked for a Cutout account with your address",
                "Your address already has a Cutout account, so no new one was made. If this was you, "
                "create a key with your password (`cutout keys create --email ...`); if not, ignore this.",
            )
        else:
            hours = self.code_lifetime.total_seconds() / 3600
            self.outbox.send(
                email,
                "Your Cutout sign-up code",
                f"Your code: {code}\nFinish with `cutout signup --email {email} --code {code}` within {hours:.0f} h.",
                {CODE_HEADER: code},
            )

    def _free_credits(self, session: Session, source: str, now: datetime) -> tuple[int, str]:
        """The free millicredits a sign-up from `source` gets (0 past the cap), and why none."""
        if self.free_millicredits <= 0:
            return 0, ""
        if self.grants_per_source <= 0 or not source:
            return self.free_millicredits, ""
        source_hash = hashlib.sha256(source.encode()).hexdigest()
        recent = session.exec(
            select(func.count())
            .select_from(SignUpSource)
            .where(SignUpSource.source_hash == source_hash, SignUpSource.at > now - self.grant_window)
        ).one()
        session.add(SignUpSource(source_hash=source_hash, at=now))
        if recent >= self.grants_per_source:
            hours = self.grant_window.total_seconds() / 3600
            return 0, (
                f"FREE_GRANTS_PER_SOURCE_EXCEEDED: {self.grants_per_source} sign-ups with free credits from "
                f"your network in {hours:.0f} h already; this account starts without free credits (buy credits)"
            )
        return self.free_millicredits, ""

    def check_region(self, region: str) -> None:
        """This cell serves its own region only; another region's sign-up goes to that region's endpoint."""
        known = sorted({self.region, *self.region_endpoints})
        if region not in known:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"region must be one of {', '.join(known)}; it is fixed once the account exists",
                field="region",
            )
        if region != self.region:
            endpoint = self.region_endpoints.get(region, "") or "that region's endpoint"
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is the {self.region} cell; accounts of region {region} live in that region only: "
                f"sign up at {endpoint}",
                reason="WRONG_REGION",
                field="region",
                metadata={"region": region, "endpoint": endpoint},
            )

    def verify_sign_up(self, email: str, password: str, code: str, key_name: str) -> tuple[Account, str, ApiKey]:
        """Opens the account a sign-up asked for: the code sent to the address, and its password.

        Any mistake (no such sign-up, expired, wrong code or password) is the same answer,
        and scrypt runs whatever the mistake.
        """
        email = credentials.normalise_email(email)
        now = self.clock()
        code_hash = credentials.hash_api_key(code.strip()[:200])
        with Session(self.engine, expire_on_commit=False) as session:
            waiting = session.exec(select(PendingSignUp).where(PendingSignUp.email == email)).all()
        # The sign-up this code belongs to (an address may have a few); one scrypt either way.
        pending = next((p for p in waiting if hmac.compare_digest(p.code_hash, code_hash)), None)
        stored = pending.password_hash if pending is not None else self._dummy_hash
        password_ok = credentials.verify_password(password[:MAX_PASSWORD_LENGTH], stored)
        code_ok = pending is not None
        if pending is None or not (password_ok and code_ok) or aware(pending.expires_at) <= now:
            raise verification_failed()
        account = Account(
            id=str(uuid.uuid4()),
            email=email,
            display_name=pending.display_name,
            password_hash=pending.password_hash,
            region=pending.region,
            plan=self.plan,
            age_confirmed=True,
            marketing_opt_in=pending.marketing_opt_in,
            created_at=now,
        )
        api_key = credentials.new_api_key()
        key = ApiKey(
            id=str(uuid.uuid4()),
            account_id=account.id,
            name=(key_name or "first").strip()[:200],
            prefix=credentials.shown_prefix(api_key),
            key_hash=credentials.hash_api_key(api_key),
            created_at=now,
        )
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                gone = session.execute(delete(PendingSignUp).where(col(PendingSignUp.id) == pending.id))
                if gone.rowcount != 1:  # verified meanwhile
                    raise verification_failed()
                # The address has its account now: the other sign-ups of it go.
                session.execute(delete(PendingSignUp).where(col(PendingSignUp.email) == email))
                session.add(account)
                session.flush()
                if pending.free_millicredits > 0:
                    self.ledger.grant_in(
                        session.connection(),
                        account.id,
                        pending.free_millicredits,
                        "signup",
                        now + self.credit_lifetime,
                    )
                session.add(key)
                session.flush()
        except IntegrityError:
            raise verification_failed() from None
        return account, api_key, key

    # -- ChangeEmail: the new address proves its mailbox, as at sign-up ------------

    def request_email_change(self, account_id: str, new_email: str) -> None:
        """Step 1: a code to the new address, or a notice if it has an account; nothing changes
        yet, and the caller hears the same either way (no "EMAIL_TAKEN" to probe with)."""
        email = _check_email(new_email, "new_email")
        code = credentials.new_signup_code()
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            account = session.get(Account, account_id)
            if account is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
            if account.email == email:
                raise invalid_argument("new_email is the address the account has already", field="new_email")
            taken = session.exec(select(Account.id).where(Account.email == email)).first() is not None
            change = session.get(EmailChange, account_id)
            if change is not None:  # a newer request of the owner replaces theirs
                session.delete(change)
                session.flush()
            if not taken:
                session.add(
                    EmailChange(
                        account_id=account_id,
                        new_email=email,
                        code_hash=credentials.hash_api_key(code),
                        created_at=now,
                        expires_at=now + self.code_lifetime,
                    )
                )
        try:
            if taken:
                self.outbox.send(
                    email,
                    "Someone asked to move a Cutout account to your address",
                    "Your address already has a Cutout account, so nothing was changed. If this was not you, "
                    "ignore this.",
                )
            else:
                hours = self.code_lifetime.total_seconds() / 3600
                self.outbox.send(
                    email,
                    "Your Cutout code to change your e-mail",
                    f"Your code: {code}\nFinish with `cutout account email {email} --code {code}` within "
                    f"{hours:.0f} h. If this was not you, ignore this: nothing changes without the code.",
                    {CODE_HEADER: code},
                )
        except MailUnavailable:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "the e-mail with your code could not be sent; try again in a minute",
                reason="MAIL_UNAVAILABLE",
            ) from None

    def confirm_email_change(self, account_id: str, new_email: str, code: str) -> tuple[Account, str]:
        """Step 2: the account under the proven address, and the address it had. A wrong or
        expired code, another address, or an address taken meanwhile: the same refusal."""
        email = _check_email(new_email, "new_email")
        code_hash = credentials.hash_api_key(code.strip()[:200])
        refused = unauthenticated(
            "the code or new_email is wrong, or the code expired; call ChangeEmail without a code for a new one",
            "VERIFICATION_FAILED",
        )
        now = self.clock()
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                change = session.get(EmailChange, account_id)
                if (
                    change is None
                    or change.new_email != email
                    or not hmac.compare_digest(change.code_hash, code_hash)
                    or aware(change.expires_at) <= now
                ):
                    raise refused
                if session.exec(select(Account.id).where(Account.email == email)).first() is not None:
                    raise refused  # its owner made an account meanwhile
                account = session.get(Account, account_id)
                if account is None:
                    raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
                old = account.email
                account.email = email
                session.add(account)
                session.delete(change)
                session.add(AccessLogEntry(at=now, account_id=account_id, actor="owner", action="correct_email"))
                session.flush()
        except IntegrityError:  # taken by a sign-up verified at the same moment
            raise refused from None
        return account, old

    def sweep(self) -> dict[str, int]:
        """Deletes what has outlived its lifetime here; returns how many of each."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            pending = session.execute(delete(PendingSignUp).where(col(PendingSignUp.expires_at) <= now)).rowcount
            changes = session.execute(delete(EmailChange).where(col(EmailChange.expires_at) <= now)).rowcount
            sources = session.execute(
                delete(SignUpSource).where(col(SignUpSource.at) <= now - self.grant_window)
            ).rowcount
            keys = session.execute(
                delete(ApiKey).where(
                    col(ApiKey.revoked_at).is_not(None), col(ApiKey.revoked_at) <= now - self.revoked_key_lifetime
                )
            ).rowcount
        mail = self.outbox.sweep(now, self.mail_lifetime)
        return {
            "pending sign-ups": pending,
            "e-mail changes": changes,
            "sign-up sources": sources,
            "revoked keys": keys,
            "e-mails": mail,
        }

    def login(self, email: str, password: str) -> Account:
        """The account for an e-mail and password, or UNAUTHENTICATED (same answer for either mistake)."""
        with Session(self.engine, expire_on_commit=False) as session:
            account = session.exec(select(Account).where(Account.email == credentials.normalise_email(email))).first()
        stored = account.password_hash if account else self._dummy_hash
        if not credentials.verify_password(password[:MAX_PASSWORD_LENGTH], stored) or account is None:
            raise unauthenticated(WRONG_LOGIN_MESSAGE, "WRONG_CREDENTIALS")
        return account

    # -- API keys -------------------------------------------------------------------

    def authenticate(self, api_key: str) -> Caller:
        """Every call looks the key up (nothing is cached), so a revoked key fails at once."""
        if not api_key:
            raise unauthenticated(NO_KEY_MESSAGE, "API_KEY_MISSING")
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.exec(
                select(ApiKey, Account)
                .join(Account, col(Account.id) == col(ApiKey.account_id))
                .where(ApiKey.key_hash == credentials.hash_api_key(api_key))
            ).first()
            if row is None:
                raise unauthenticated(
                    "the API key is not valid; check CUTOUT_API_KEY (or your config file) or create a new key",
                    "API_KEY_INVALID",
                )
            key, account = row
            if key.revoked_at is not None:
                raise unauthenticated(
                    "this API key was revoked; create a new one with `cutout keys create`", "API_KEY_REVOKED"
                )
            caller = Caller(
                account_id=account.id,
                key_id=key.id,
                region=account.region,
                plan=account.plan,
                processing_restricted=account.processing_restricted,
                usage_stats_opt_out=account.usage_stats_opt_out,
            )
            stale = key.last_used_at is None or key.last_used_at <= now - LAST_USED_RESOLUTION
        if stale:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                fresh = session.get(ApiKey, key.id)
                if fresh is not None:
                    fresh.last_used_at = now
                    session.add(fresh)
        return caller

    def create_key(self, account_id: str, name: str) -> tuple[str, ApiKey]:
        if len(name) > 200:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "name is at most 200 characters", field="name")
        api_key = credentials.new_api_key()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            active = session.exec(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.account_id == account_id, col(ApiKey.revoked_at).is_(None))
            ).one()
            if active >= MAX_KEYS_PER_ACCOUNT:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"an account has at most {MAX_KEYS_PER_ACCOUNT} active keys; revoke one first",
                    reason="TOO_MANY_KEYS",
                )
            key = ApiKey(
                id=str(uuid.uuid4()),
                account_id=account_id,
                name=name.strip(),
                prefix=credentials.shown_prefix(api_key),
                key_hash=credentials.hash_api_key(api_key),
                created_at=self.clock(),
            )
            session.add(key)
            session.flush()
        return api_key, key

    def list_keys(
        self, account_id: str, limit: int | None = None, after: tuple[datetime, str] | None = None
    ) -> list[ApiKey]:
        """Oldest first, in a stable order (created time, then id); `after` is the (created_at,
        id) of the last key a previous page showed (keyset pagination)."""
        query = select(ApiKey).where(ApiKey.account_id == account_id)
        if after is not None:
            created_at, key_id = after
            query = query.where(
                or_(
                    col(ApiKey.created_at) > created_at,
                    and_(col(ApiKey.created_at) == created_at, col(ApiKey.id) > key_id),
                )
            )
        query = query.order_by(col(ApiKey.created_at), col(ApiKey.id))
        if limit is not None:
            query = query.limit(limit)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def revoke_key(self, account_id: str, key_id: str) -> ApiKey:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            key = session.exec(select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == account_id)).first()
            if key is None:
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    "no key with this id on your account; list them with `cutout keys list`",
                    reason="API_KEY_NOT_FOUND",
                    field="id",
                )
            if key.revoked_at is None:
                key.revoked_at = self.clock()
                session.add(key)
            session.flush()
            return key

    # -- profile --------------------------------------------------------------------

    def get(self, account_id: str) -> Account:
        with Session(self.engine, expire_on_commit=False) as session:
            account = session.get(Account, account_id)
            if account is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
            return account

    def find_by_email(self, email: str) -> Account:
        with Session(self.engine, expire_on_commit=False) as session:
            account = session.exec(select(Account).where(Account.email == credentials.normalise_email(email))).first()
            if account is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
            return account

    def count_active_keys(self, account_id: str) -> int:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.account_id == account_id, col(ApiKey.revoked_at).is_(None))
            ).one()

    def update_profile(
        self,
        account_id: str,
        *,
        display_name: str | None = None,
        marketing_opt_in: bool | None = None,
        usage_stats_opt_out: bool | None = None,
        processing_restricted: bool | None = None,
    ) -> Account:
        if display_name is not None:
            _check_display_name(display_name)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            account = session.get(Account, account_id)
            if account is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "no such account", reason="ACCOUNT_NOT_FOUND")
            if display_name is not None:
                account.display_name = display_name.strip()
            if marketing_opt_in is not None:
                account.marketing_opt_in = marketing_opt_in
            if usage_stats_opt_out is not None:
                account.usage_stats_opt_out = usage_stats_opt_out
            if processing_restricted is not None:
                account.processing_restricted = processing_restricted
            session.add(account)
            session.flush()
            return account

    def check_password(self, account_id: str, password: str) -> None:
        """UNAUTHENTICATED unless `password` is the account's (for what a key alone may not do)."""
        account = self.get(account_id)
        if not password or not credentials.verify_password(password[:MAX_PASSWORD_LENGTH], account.password_hash):
            raise unauthenticated(
                "this needs the account's password as well as a key (`password`); a key alone cannot manage keys",
                "PASSWORD_REQUIRED" if not password else "WRONG_CREDENTIALS",
            )

    def change_password(self, account_id: str, current: str, new: str) -> None:
        _check_password(new, "new_password")
        account = self.get(account_id)
        _check_strength(new, "new_password", [account.email, account.email.split("@")[0], account.display_name])
        if not credentials.verify_password(current[:MAX_PASSWORD_LENGTH], account.password_hash):
            raise unauthenticated("the current password is wrong", "WRONG_CREDENTIALS")
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            fresh = session.get(Account, account_id)
            assert fresh is not None
            fresh.password_hash = credentials.hash_password(new, n=self.scrypt_n)
            session.add(fresh)


def _check_email(email: str, field: str = "email") -> str:
    try:
        return credentials.canonical_email(email)
    except ValueError as error:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} must be an e-mail address like name@example.com: {error}",
            field=field,
        ) from None


def _check_display_name(name: str) -> None:
    if len(name) > 200:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT, "display_name is at most 200 characters", field="display_name"
        )
    if credentials.unsafe_characters(name):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "display_name may not hold control characters (terminal escapes, NUL), zero-width or direction marks",
            field="display_name",
        )


def _check_strength(password: str, field: str, related: list[str]) -> None:
    weak = credentials.weak_password_reason(password, related)
    if weak:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the password is too easy to guess ({weak.rstrip('.')}); use a longer phrase of unrelated words",
            field=field,
            reason="WEAK_PASSWORD",
        )


def _check_password(password: str, field: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long",
            field=field,
        )
