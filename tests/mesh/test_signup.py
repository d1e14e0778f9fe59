"""Sign-up through the real gateway: no enumeration, the cell's region only, and a cap on
free grants per source address."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, cutout_pb2_grpc
from services.accounts import credentials
from services.accounts.admin import admins_line
from services.accounts.db import make_engine, migrate
from services.accounts.ledger import Ledger
from services.accounts.mail import CODE_HEADER, Outbox, messages_to
from services.accounts.store import AccountStore
from services.common.errors import error_details
from services.launcher import Mesh, ServiceProcess, accounts_process, write_secret
from tests.conftest import SIGNUP_CREDITS, another_gateway, new_account, sign_up, sign_up_code


def info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    (found,) = [d for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return found


def ask(channel: grpc.Channel, email: str, password: str, region: str = "eu") -> account_pb2.SignUpResponse:
    return cutout_pb2_grpc.CutoutStub(channel).SignUp(
        account_pb2.SignUpRequest(email=email, password=password, region=region, age_confirmed=True), timeout=30
    )


def test_sign_up_answers_the_same_whether_or_not_the_address_has_an_account(mesh: Mesh, raw_channel):
    """Before, a known e-mail got ALREADY_EXISTS (ACCOUNT_EXISTS)."""
    known = new_account(raw_channel, mesh.admin_token)
    fresh = f"fresh-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(15)

    to_known = ask(raw_channel, known.email, password)
    to_fresh = ask(raw_channel, fresh, password)
    assert to_known.SerializeToString(deterministic=True) == to_fresh.SerializeToString(deterministic=True)
    assert to_known.verification_required and to_known.free_credits == SIGNUP_CREDITS

    # The difference goes to the mailbox, out of band: a code for the new address,
    # a notice for the one with an account.
    (notice,) = [m for m in messages_to(mesh.outbox, known.email) if "already has" in m.get_content()]
    assert not notice[CODE_HEADER]
    assert messages_to(mesh.outbox, fresh)[-1][CODE_HEADER]
    # The existing account is untouched: its password still opens it, the new one does not.
    public = cutout_pb2_grpc.CutoutStub(raw_channel)
    public.CreateApiKey(account_pb2.CreateApiKeyRequest(email=known.email, password=known.password), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        public.CreateApiKey(account_pb2.CreateApiKeyRequest(email=known.email, password=password), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A sign-up not yet verified cannot log in either (so a login tells nothing about it).
    with pytest.raises(grpc.RpcError) as caught:
        public.CreateApiKey(account_pb2.CreateApiKeyRequest(email=fresh, password=password), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Verification with a wrong code, or the wrong password, is one answer.
    for code, given in ((sign_up_code(fresh) + "x", password), (sign_up_code(fresh), password + "x")):
        with pytest.raises(grpc.RpcError) as caught:
            public.VerifySignUp(account_pb2.VerifySignUpRequest(email=fresh, password=given, code=code), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info(caught.value).reason == "VERIFICATION_FAILED"
    verified = public.VerifySignUp(
        account_pb2.VerifySignUpRequest(email=fresh, password=password, code=sign_up_code(fresh)), timeout=30
    )
    assert verified.balance.available == SIGNUP_CREDITS and verified.api_key.startswith("ck_")
    # A code works once.
    with pytest.raises(grpc.RpcError) as caught:
        public.VerifySignUp(
            account_pb2.VerifySignUpRequest(email=fresh, password=password, code=sign_up_code(fresh)), timeout=30
        )
    assert info(caught.value).reason == "VERIFICATION_FAILED"


def test_both_answers_run_the_same_work_scrypt_included(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No timing difference by construction: a known and an unknown address both hash the
    password (scrypt), count the source, write one e-mail; the spy only counts real calls."""
    engine = make_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    migrate(engine)
    store = AccountStore(
        engine,
        Ledger(engine, hold_timeout=timedelta(minutes=5)),
        region="eu",
        region_endpoints={},
        plan="free",
        scrypt_n=2**10,
        outbox=Outbox(tmp_path / "outbox"),
        free_millicredits=3000,
        grants_per_source=100,
    )
    hashed: list[int] = []
    real_hash = credentials.hash_password

    def counting(password: str, *, n: int) -> str:
        hashed.append(n)
        return real_hash(password, n=n)

    monkeypatch.setattr(credentials, "hash_password", counting)
    fields = {"display_name": "", "region": "eu", "age_confirmed": True, "marketing_opt_in": False, "source": "a"}
    store.sign_up(email="known@example.com", password="first long password", **fields)
    code = messages_to(tmp_path / "outbox", "known@example.com")[-1][CODE_HEADER]
    store.verify_sign_up("known@example.com", "first long password", str(code), "")
    hashed.clear()
    known = store.sign_up(email="known@example.com", password="another long password", **fields)
    assert hashed == [2**10]
    unknown = store.sign_up(email="unknown@example.com", password="another long password", **fields)
    assert hashed == [2**10, 2**10]
    assert known == unknown
    assert len(messages_to(tmp_path / "outbox", "known@example.com")) == 2  # the code, then the notice
    engine.dispose()


def test_a_cell_signs_up_its_own_region_only_and_names_the_other_endpoint(raw_channel):
    with pytest.raises(grpc.RpcError) as caught:
        ask(raw_channel, f"us-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(15), region="us")
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info(error).reason == "WRONG_REGION"
    assert "us.api.cutout.example.com:443" in error.details()
    assert info(error).metadata["endpoint"] == "us.api.cutout.example.com:443"


@pytest.fixture
def capped_gateway(mesh: Mesh, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A gateway on accounts of its own (own database and outbox) with a cap of 2 free grants per source."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    accounts = accounts_process(
        run_dir,
        f"sqlite:///{tmp_path / 'accounts.db'}",
        write_secret(run_dir / "admins", admins_line("capped", "capped-admin") + "\n"),
        {
            **mesh.env,
            "CUTOUT_ACCOUNTS_FREE_GRANTS_PER_SOURCE": "2",
            "CUTOUT_ACCOUNTS_FREE_GRANT_WINDOW_H": "24",
            "CUTOUT_ACCOUNTS_MAIL_OUTBOX_DIR": str(tmp_path / "outbox"),
        },
        mesh.pki,
    )
    accounts.start()
    try:
        accounts.wait_serving()
        with another_gateway(mesh, run_dir, mesh.env, accounts=accounts.address) as gateway:
            yield gateway
    finally:
        assert accounts.stop() == 0


def test_free_grants_are_capped_per_source_address(capped_gateway: ServiceProcess):
    """Before, 30 sign-ups from one client all got free credits."""
    with capped_gateway.channel() as channel:
        emails = [f"farm-{i}-{secrets.token_hex(4)}@example.com" for i in range(3)]
        password = secrets.token_urlsafe(15)
        answers = [ask(channel, email, password) for email in emails]
        assert [a.free_credits for a in answers] == [SIGNUP_CREDITS, SIGNUP_CREDITS, 0]
        assert [a.free_credits_note for a in answers[:2]] == ["", ""]
        assert answers[2].free_credits_note.startswith("FREE_GRANTS_PER_SOURCE_EXCEEDED")
        assert "2 sign-ups with free credits" in answers[2].free_credits_note
        public = cutout_pb2_grpc.CutoutStub(channel)
        balances = [
            public.VerifySignUp(
                account_pb2.VerifySignUpRequest(email=email, password=password, code=sign_up_code(email)), timeout=30
            ).balance.available
            for email in emails
        ]
        assert balances == [SIGNUP_CREDITS, SIGNUP_CREDITS, 0], "the third account was made, without free credits"
        # Signing up an address that has an account counts too (or the count would tell).
        assert ask(channel, emails[0], password).free_credits == 0


def test_the_sign_up_helper_still_makes_a_working_account(raw_channel):
    email = f"helper-{secrets.token_hex(4)}@example.com"
    verified = sign_up(raw_channel, email, secrets.token_urlsafe(15))
    assert verified.profile.email == email and verified.profile.region == "eu"
