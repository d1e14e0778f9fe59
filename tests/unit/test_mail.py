"""Sign-up e-mails through a real SMTP relay on loopback (aiosmtpd), STARTTLS required."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from services.accounts.db import make_engine, migrate
from services.accounts.ledger import Ledger
from services.accounts.mail import CODE_HEADER, SmtpRelay
from services.accounts.store import AccountStore
from services.common.errors import ServiceError
from services.common.tls import CellPki
from services.launcher import free_port

PASSWORD = "a sufficiently long password"


class Received:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def relay(tmp_path: Path, *, starttls: bool) -> Iterator[tuple[Controller, Received, CellPki]]:
    pki = CellPki(tmp_path / "pki")
    identity = pki.issue("smtp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_file, identity.key_file)
    received = Received()
    controller = Controller(
        received,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context if starttls else None,
        require_starttls=starttls,
    )
    controller.start()
    try:
        yield controller, received, pki
    finally:
        controller.stop()


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[tuple[Controller, Received, CellPki]]:
    yield from relay(tmp_path, starttls=True)


@pytest.fixture
def plain_relay(tmp_path: Path) -> Iterator[tuple[Controller, Received, CellPki]]:
    yield from relay(tmp_path, starttls=False)


def store_with(tmp_path: Path, mailer: SmtpRelay) -> AccountStore:
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    migrate(engine)
    return AccountStore(
        engine,
        Ledger(engine, hold_timeout=timedelta(minutes=5)),
        region="eu",
        region_endpoints={},
        plan="free",
        scrypt_n=2**10,
        outbox=mailer,
        free_millicredits=2000,
    )


def sign_up(store: AccountStore, email: str) -> None:
    store.sign_up(
        email=email,
        password=PASSWORD,
        display_name="",
        region="eu",
        age_confirmed=True,
        marketing_opt_in=False,
        source="192.0.2.9",
    )


def test_codes_go_through_the_relay_over_starttls_and_open_the_account(tmp_path, tls_relay):
    controller, received, pki = tls_relay
    store = store_with(tmp_path, SmtpRelay("127.0.0.1", controller.port, ca_file=pki.ca_file))
    sign_up(store, "relayed@example.com")
    (message,) = received.messages
    assert message["To"] == "relayed@example.com" and message[CODE_HEADER]
    account, api_key, _ = store.verify_sign_up("relayed@example.com", PASSWORD, message[CODE_HEADER], "")
    assert account.email == "relayed@example.com" and api_key.startswith("ck_")
    sign_up(store, "relayed@example.com")  # the address has an account now: a notice, no code
    assert len(received.messages) == 2 and not received.messages[1][CODE_HEADER]


def test_a_relay_without_starttls_or_with_a_foreign_certificate_gets_nothing(tmp_path, plain_relay, tls_relay):
    plain, plain_received, _ = plain_relay
    with pytest.raises(ServiceError) as caught:
        sign_up(store_with(tmp_path / "a", SmtpRelay("127.0.0.1", plain.port)), "plain@example.com")
    assert caught.value.reason == "MAIL_UNAVAILABLE" and plain_received.messages == []
    tls, tls_received, _ = tls_relay
    other_ca = CellPki(tmp_path / "other-pki").ca_file  # not the CA that issued the relay's certificate
    with pytest.raises(ServiceError) as caught:
        sign_up(store_with(tmp_path / "b", SmtpRelay("127.0.0.1", tls.port, ca_file=other_ca)), "other@example.com")
    assert caught.value.reason == "MAIL_UNAVAILABLE" and tls_received.messages == []
