"""Accounts, API keys, profile and administration through the real gateway."""

from __future__ import annotations

import hashlib
import sqlite3

import grpc
import pytest
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, accounts_pb2, accounts_pb2_grpc, cutout_pb2, cutout_pb2_grpc
from services.common.errors import error_details
from services.common.settings import ADMIN_TOKEN_METADATA, API_KEY_METADATA
from tests.conftest import SIGNUP_CREDITS, new_account, sign_up


def reasons(error: grpc.RpcError) -> list[str]:
    return [d.reason for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]


def fails(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    return caught.value


@pytest.fixture
def public(raw_channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(raw_channel)


def test_sign_up_gives_free_credits_and_a_private_profile(raw_channel, public):
    signed_up = sign_up(raw_channel, "  Ada.Lovelace+news@Example.COM ", "long enough password", display_name="Ada")
    profile = signed_up.profile
    assert profile.email == "ada.lovelace@example.com", "e-mails are normalised"
    assert (profile.region, profile.plan, profile.marketing_opt_in) == ("eu", "free", False)
    assert signed_up.balance.available == SIGNUP_CREDITS and signed_up.balance.HasField("next_expiry")
    assert signed_up.api_key.startswith("ck_") and signed_up.key.name == "first"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"age_confirmed": False}, "age_confirmed", "at least 13"),
        ({"region": "mars"}, "region", "eu, us"),
        ({"password": "short"}, "password", "10 to"),
        ({"email": "not-an-address"}, "email", "e-mail address"),
    ],
)
def test_sign_up_refusals_say_what_to_fix(public, fields, field, words):
    error = fails(
        public.SignUp,
        account_pb2.SignUpRequest(
            **{
                "email": "y@example.com",
                "password": "long enough password",
                "region": "eu",
                "age_confirmed": True,
                **fields,
            }
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.details()
    violations = [
        v.field for d in error_details(error) if isinstance(d, error_details_pb2.BadRequest) for v in d.field_violations
    ]
    assert violations == [field]


def test_calls_without_a_valid_key_are_unauthenticated_with_a_hint(public, astronaut_jpeg):
    request = cutout_pb2.RemoveBackgroundRequest(image=astronaut_jpeg)
    missing = fails(public.RemoveBackground, request)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-api-key" in missing.details() and "cutout keys create" in missing.details()
    assert reasons(missing) == ["API_KEY_MISSING"]
    wrong = fails(public.GetBalance, account_pb2.GetBalanceRequest(), metadata=[(API_KEY_METADATA, "ck_nope")])
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED and reasons(wrong) == ["API_KEY_INVALID"]
    login = fails(public.CreateApiKey, account_pb2.CreateApiKeyRequest(email="nobody@example.com", password="x" * 12))
    assert login.code() == grpc.StatusCode.UNAUTHENTICATED and login.details() == "e-mail or password is wrong"


def test_keys_are_listed_by_prefix_and_a_revoked_key_is_refused_on_the_very_next_call(
    mesh, raw_channel, public, astronaut_jpeg
):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    second = public.CreateApiKey(
        account_pb2.CreateApiKeyRequest(name="ci", password=account.password), metadata=account.metadata, timeout=30
    )
    assert second.api_key.startswith("ck_") and len(second.api_key) >= 43
    assert second.api_key.startswith(second.key.prefix) and len(second.key.prefix) < 16
    with_second = [(API_KEY_METADATA, second.api_key)]
    request = cutout_pb2.RemoveBackgroundRequest(image=astronaut_jpeg)
    public.RemoveBackground(request, metadata=with_second, timeout=60)

    listed = public.ListApiKeys(account_pb2.ListApiKeysRequest(), metadata=account.metadata, timeout=30).keys
    assert [key.name for key in listed] == ["first", "ci"]
    assert all(key.prefix and not key.HasField("revoked_at") for key in listed)
    assert listed[1].HasField("last_used_at")
    assert second.api_key not in str(listed), "a listing never shows a whole key"

    public.RevokeApiKey(
        account_pb2.RevokeApiKeyRequest(id=second.key.id, password=account.password),
        metadata=account.metadata,
        timeout=30,
    )
    refused = fails(public.RemoveBackground, request, metadata=with_second)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and reasons(refused) == ["API_KEY_REVOKED"]
    assert "revoked" in refused.details()
    refused = fails(public.GetBalance, account_pb2.GetBalanceRequest(), metadata=with_second)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    # The other key still works, and cannot revoke keys of another account.
    assert public.GetBalance(account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=30).available == 9
    other = new_account(raw_channel, mesh.admin_token)
    error = fails(
        public.RevokeApiKey,
        account_pb2.RevokeApiKeyRequest(id=second.key.id, password=other.password),
        metadata=other.metadata,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_profile_and_password_can_change_but_not_the_region(mesh, raw_channel, public):
    account = new_account(raw_channel, mesh.admin_token)
    updated = public.UpdateProfile(
        account_pb2.UpdateProfileRequest(
            display_name="New name", marketing_opt_in=True, update_fields=["display_name", "marketing_opt_in"]
        ),
        metadata=account.metadata,
        timeout=30,
    )
    assert (updated.display_name, updated.marketing_opt_in, updated.region) == ("New name", True, "eu")
    error = fails(
        public.UpdateProfile, account_pb2.UpdateProfileRequest(update_fields=["region"]), metadata=account.metadata
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "region is fixed" in error.details()
    assert public.GetProfile(account_pb2.GetProfileRequest(), metadata=account.metadata, timeout=30) == updated

    wrong = fails(
        public.ChangePassword,
        account_pb2.ChangePasswordRequest(current_password="not the password", new_password="a brand new password"),
        metadata=account.metadata,
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    public.ChangePassword(
        account_pb2.ChangePasswordRequest(current_password=account.password, new_password="a brand new password"),
        metadata=account.metadata,
        timeout=30,
    )
    old = fails(public.CreateApiKey, account_pb2.CreateApiKeyRequest(email=account.email, password=account.password))
    assert old.code() == grpc.StatusCode.UNAUTHENTICATED
    public.CreateApiKey(
        account_pb2.CreateApiKeyRequest(email=account.email, password="a brand new password"), timeout=30
    )


def test_administration_needs_the_admin_token_never_an_api_key(mesh, raw_channel, admin, funded_account):
    request = account_pb2.GrantCreditsRequest(account_id=funded_account.account_id, amount=5)
    with_key = fails(admin.GrantCredits, request, metadata=funded_account.metadata)
    assert with_key.code() == grpc.StatusCode.UNAUTHENTICATED and "x-admin-token" in with_key.details()
    wrong = fails(admin.GrantCredits, request, metadata=[(ADMIN_TOKEN_METADATA, funded_account.api_key)])
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED

    account = new_account(raw_channel, mesh.admin_token)
    token = [(ADMIN_TOKEN_METADATA, mesh.admin_token)]
    found = admin.LookupAccount(
        account_pb2.LookupAccountRequest(email=account.email.upper()), metadata=token, timeout=30
    )
    assert found.profile.account_id == account.account_id and found.active_api_keys == 1
    granted = admin.GrantCredits(
        account_pb2.GrantCreditsRequest(account_id=account.account_id, amount=7, source="purchase"),
        metadata=token,
        timeout=30,
    )
    assert granted.balance.available == SIGNUP_CREDITS + 7
    error = fails(
        admin.GrantCredits, account_pb2.GrantCreditsRequest(account_id=account.account_id, amount=-1), metadata=token
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_database_holds_no_password_and_no_key_in_clear(mesh, raw_channel, public):
    account = new_account(raw_channel, mesh.admin_token)
    with sqlite3.connect(f"file:{mesh.sqlite_path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"accounts", "api_keys", "credit_grants", "reservations", "ledger_entries"} <= set(tables)
        dump = "\n".join(repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"'))
        stored_hash = db.execute("SELECT password_hash FROM accounts WHERE id = ?", (account.account_id,)).fetchone()[0]
        key_hashes = [
            row[0] for row in db.execute("SELECT key_hash FROM api_keys WHERE account_id = ?", (account.account_id,))
        ]
    assert account.email in dump, "the dump did read the account"
    assert account.password not in dump
    assert account.api_key not in dump and account.api_key[12:] not in dump
    assert stored_hash.startswith("scrypt$16384$8$1$")
    assert key_hashes == [hashlib.sha256(account.api_key.encode()).hexdigest()]
    for raw in (mesh.sqlite_path.with_name(mesh.sqlite_path.name + "-wal"), mesh.sqlite_path):
        if raw.exists():
            data = raw.read_bytes()
            assert account.password.encode() not in data and account.api_key.encode() not in data


def test_authorize_and_reserve_looks_the_key_up_and_reserves_in_one_call(mesh, raw_channel, public):
    """The gateway's one accounts call per removal: a revoked key or a key of another account
    reserves nothing; a good key gets its caller and its hold."""
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    other = new_account(raw_channel, mesh.admin_token, credits=5)

    def authorize(api_key: str, account_id: str, key: str) -> accounts_pb2.AuthorizeAndReserveResponse:
        reserve = accounts_pb2.ReserveRequest(account_id=account_id, idempotency_key=key, amount=2, request_hash="h")
        with mesh.accounts.channel(as_name="gateway") as channel:
            return accounts_pb2_grpc.AccountsStub(channel).AuthorizeAndReserve(
                accounts_pb2.AuthorizeAndReserveRequest(api_key=api_key, reserve=reserve), timeout=30
            )

    def available(customer) -> int:
        return public.GetBalance(account_pb2.GetBalanceRequest(), metadata=customer.metadata, timeout=30).available

    answer = authorize(account.api_key, account.account_id, "first")
    assert answer.caller.account_id == account.account_id and answer.caller.key_id
    assert answer.reserved.outcome == accounts_pb2.RESERVE_OUTCOME_NEW and answer.reserved.reservation_id
    assert available(account) == 3

    with pytest.raises(grpc.RpcError) as caught:
        authorize(account.api_key, other.account_id, "another account")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED and reasons(caught.value) == ["ACCOUNT_MISMATCH"]
    assert (available(account), available(other)) == (3, 5)

    second = public.CreateApiKey(
        account_pb2.CreateApiKeyRequest(name="soon revoked", password=account.password),
        metadata=account.metadata,
        timeout=30,
    )
    public.RevokeApiKey(
        account_pb2.RevokeApiKeyRequest(id=second.key.id, password=account.password),
        metadata=account.metadata,
        timeout=30,
    )
    with pytest.raises(grpc.RpcError) as caught:
        authorize(second.api_key, account.account_id, "revoked")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and reasons(caught.value) == ["API_KEY_REVOKED"]
    assert available(account) == 3
