"""Credits finer than whole numbers (issue #16): the ledger counts millicredits, the API
shows exact decimals, prices are decimal settings (a preview a quarter of a full result by
default), and migration 0003_units converts an existing ledger exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from pydantic import ValidationError
from sqlalchemy import text

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.accounts.db import downgrade, make_engine, migrate
from services.accounts.ledger import Ledger
from services.common import credits
from services.common.errors import error_details
from services.common.settings import ADMIN_TOKEN_METADATA, API_KEY_METADATA
from services.gateway.settings import GatewaySettings
from services.launcher import Mesh
from tests.conftest import another_gateway, encode, new_account
from tests.mesh.test_cli import run_cli

Opts = options_pb2.RemoveBackgroundOptions


def _remove(stub, image: bytes, metadata, **options: object) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=Opts(**options))
    return stub.RemoveBackground(request, metadata=metadata, timeout=120)


def _ledger(channel: grpc.Channel, metadata) -> account_pb2.ListLedgerResponse:
    return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(limit=100), metadata=metadata, timeout=30
    )


def _grant(channel: grpc.Channel, mesh: Mesh, **request: object) -> account_pb2.GrantCreditsResponse:
    """A grant by the mesh's admin, on accounts' admin listener (`channel`'s gateway serves no Admin)."""
    with mesh.admin.channel() as admin_channel:
        return cutout_pb2_grpc.AdminStub(admin_channel).GrantCredits(
            account_pb2.GrantCreditsRequest(**request), metadata=[(ADMIN_TOKEN_METADATA, mesh.admin_token)], timeout=30
        )


# The unit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shown", "milli"),
    [("0", 0), ("0.25", 250), ("1", 1000), ("-0.25", -250), ("24.75", 24_750), ("0.001", 1), ("-1.5", -1500)],
)
def test_credits_convert_exactly_both_ways(shown, milli):
    assert credits.to_milli(shown) == milli and credits.text(milli) == shown
    assert credits.whole(milli) == int(Decimal(shown))  # toward zero, as the older int64 fields show it


def test_amounts_finer_than_the_ledger_unit_are_refused():
    with pytest.raises(ValueError, match="3 decimal places"):
        credits.to_milli("0.0001")
    for bad in ("abc", "NaN", "Infinity", "0.0005"):
        with pytest.raises(Exception) as caught:
            credits.parse(bad, "amount_decimal")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.field == "amount_decimal"


def test_price_settings_accept_decimals_and_default_to_a_quarter_for_a_preview(monkeypatch):
    defaults = GatewaySettings()
    assert (defaults.price_full, defaults.price_preview) == (Decimal(1), Decimal("0.25"))
    monkeypatch.setenv("CUTOUT_GATEWAY_PRICE_FULL", "2.5")
    monkeypatch.setenv("CUTOUT_GATEWAY_PRICE_PREVIEW", "0.125")
    assert (GatewaySettings().price_full, GatewaySettings().price_preview) == (Decimal("2.5"), Decimal("0.125"))
    for full, preview in (("1", "0.0001"), ("1", "0"), ("0.5", "0.75")):  # finer than 0.001, free, dearer
        monkeypatch.setenv("CUTOUT_GATEWAY_PRICE_FULL", full)
        monkeypatch.setenv("CUTOUT_GATEWAY_PRICE_PREVIEW", preview)
        with pytest.raises(ValidationError):
            GatewaySettings()


# Through the real mesh ----------------------------------------------------------------


def test_a_preview_costs_the_default_price_and_the_ledger_and_cli_show_it(mesh, raw_channel, astronaut, tmp_path):
    """The session's gateway runs with the default prices: full 1, preview 0.25."""
    assert not any(name.startswith("CUTOUT_GATEWAY_PRICE") for name in mesh.env)
    preview_price = credits.text(credits.to_milli(GatewaySettings().price_preview))
    assert preview_price == "0.25"
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    photo = encode(astronaut.resize((1024, 768)), "JPEG", quality=90)

    preview = _remove(stub, photo, account.metadata, size=options_pb2.SIZE_PREVIEW)
    assert preview.result.size == options_pb2.SIZE_PREVIEW
    assert (preview.credits_charged_decimal, preview.credits_charged) == (preview_price, 0)
    full = _remove(stub, photo, account.metadata)
    assert (full.result.size, full.credits_charged_decimal, full.credits_charged) == (options_pb2.SIZE_FULL, "1", 1)

    history = _ledger(raw_channel, account.metadata)
    reserves = sorted(e.amount_decimal for e in history.entries if e.kind == "reserve")
    commits = sorted(e.held_decimal for e in history.entries if e.kind == "commit")
    assert reserves == ["-0.25", "-1"] and commits == ["-0.25", "-1"]
    balance = history.balance
    assert (balance.available_decimal, balance.held_decimal, balance.available) == ("1.75", "0", 1)
    # The entries add up to the balance, exactly, in decimals.
    assert sum(Decimal(e.amount_decimal) for e in history.entries) == Decimal("1.75")

    # A stream of two previews: each item and the summary report 0.25 a piece.
    items = [
        cutout_pb2.StreamRequest(
            item=cutout_pb2.StreamItem(id=str(n), image=photo, options=Opts(size=options_pb2.SIZE_PREVIEW))
        )
        for n in range(2)
    ]
    answers = list(stub.RemoveBackgroundStream(iter(items), metadata=account.metadata, timeout=120))
    charged = [a.item.response.credits_charged_decimal for a in answers if a.WhichOneof("kind") == "item"]
    (summary,) = [a.summary for a in answers if a.WhichOneof("kind") == "summary"]
    assert charged == ["0.25", "0.25"] and summary.credits_charged_decimal == "0.5"

    # The CLI prints the decimals.
    shown = run_cli(mesh, "balance", "--ledger", "10", api_key=account.api_key)
    assert shown.returncode == 0, shown.stderr
    assert "1.25 credits available, 0 held" in shown.stdout and "-0.25 available" in shown.stdout
    photo_file = tmp_path / "photo.jpg"
    photo_file.write_bytes(photo)
    removed = run_cli(mesh, "remove", str(photo_file), "--size", "preview", api_key=account.api_key)
    assert removed.returncode == 0, removed.stderr
    assert "0.25 credits charged" in removed.stdout
    assert _ledger(raw_channel, account.metadata).balance.available_decimal == "1"


def test_decimal_prices_and_a_balance_short_of_a_preview(mesh: Mesh, tmp_path_factory, astronaut):
    """A gateway priced 2.9 for FULL and 0.125 for PREVIEW; 0.1 left is not enough for a
    preview (refused, uncharged, the message in decimals), 0.025 granted more is."""
    prices = {**mesh.env, "CUTOUT_GATEWAY_PRICE_FULL": "2.9", "CUTOUT_GATEWAY_PRICE_PREVIEW": "0.125"}
    with another_gateway(mesh, tmp_path_factory.mktemp("decimal"), prices) as gateway, gateway.channel() as channel:
        account = new_account(channel, mesh.admin_token, credits=3)
        stub = cutout_pb2_grpc.CutoutStub(channel)
        photo = encode(astronaut.resize((640, 480)), "JPEG", quality=90)
        assert _remove(stub, photo, account.metadata).credits_charged_decimal == "2.9"
        assert _ledger(channel, account.metadata).balance.available_decimal == "0.1"

        with pytest.raises(grpc.RpcError) as caught:
            _remove(stub, photo, account.metadata, size=options_pb2.SIZE_PREVIEW)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "costs 0.125 and 0.1 are available" in caught.value.details()
        (info,) = [d for d in error_details(caught.value) if isinstance(d, error_details_pb2.ErrorInfo)]
        assert (info.reason, info.metadata["required"], info.metadata["available"]) == (
            "INSUFFICIENT_CREDITS",
            "0.125",
            "0.1",
        )
        assert _ledger(channel, account.metadata).balance.available_decimal == "0.1", "a refusal charges nothing"

        granted = _grant(channel, mesh, account_id=account.account_id, amount_decimal="0.025")
        assert granted.balance.available_decimal == "0.125"
        preview = _remove(stub, photo, account.metadata, size=options_pb2.SIZE_PREVIEW)
        assert (preview.result.size, preview.credits_charged_decimal) == (options_pb2.SIZE_PREVIEW, "0.125")
        balance = _ledger(channel, account.metadata).balance
        assert (balance.available_decimal, balance.available) == ("0", 0)


def test_grants_in_decimals_are_checked(mesh, raw_channel):
    account = new_account(raw_channel, mesh.admin_token)
    for request, field in (
        ({"amount": 1, "amount_decimal": "1"}, "amount_decimal"),
        ({"amount_decimal": "0.0001"}, "amount_decimal"),
        ({"amount_decimal": "two"}, "amount_decimal"),
        ({"amount_decimal": "-1"}, "amount"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _grant(raw_channel, mesh, account_id=account.account_id, **request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        (bad,) = [d for d in error_details(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad.field_violations] == [field], request
    granted = _grant(raw_channel, mesh, account_id=account.account_id, amount_decimal="1.5")
    assert (granted.balance.available_decimal, granted.balance.available) == ("4.5", 4)


# Migration 0003_units -----------------------------------------------------------------

AMOUNT_COLUMNS = {
    "credit_grants": ("amount", "used"),
    "reservations": ("amount",),
    "reservation_allocations": ("amount",),
    "ledger_entries": ("amount", "held"),
}


def _amounts(engine) -> dict[str, list[tuple[int, ...]]]:
    with engine.connect() as connection:
        return {
            table: sorted(
                tuple(row) for row in connection.execute(text(f"SELECT {', '.join(columns)} FROM {table}")).all()
            )
            for table, columns in AMOUNT_COLUMNS.items()
        }


NEWER_COLUMNS = (
    "accounts ADD fingerprint_key VARCHAR(64) NOT NULL DEFAULT ''",
    "reservations ADD replays INTEGER NOT NULL DEFAULT 0",
    "reservations ADD kept_result_id VARCHAR(64) NOT NULL DEFAULT ''",
)


def _old_ledger(tmp_path):
    """A database at 0002 with a ledger written by the code of that time (whole credits):
    grants, a committed, a released and a held reservation, an expired grant written off."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate(engine, "0002")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    now = [start]
    ledger = Ledger(engine, hold_timeout=timedelta(seconds=300), clock=lambda: now[0])
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO accounts VALUES ('acc', 'e@example.com', '', '-', 'eu', 'free', 1, 0, '2030-01-01')")
        )
        # Today's ledger reads the columns of 0006_replay: there while it writes, gone after.
        for statement in NEWER_COLUMNS:
            connection.execute(text(f"ALTER TABLE {statement}"))
    ledger.grant("acc", 10, "signup", start + timedelta(days=1))
    ledger.grant("acc", 7, "purchase", start + timedelta(days=30))
    committed = ledger.reserve("acc", "k1", 4, "h1")
    ledger.commit("acc", committed.reservation_id)
    released = ledger.reserve("acc", "k2", 3, "h2")
    ledger.release("acc", released.reservation_id)
    ledger.reserve("acc", "k3", 2, "h3")  # held, then lapses
    now[0] = start + timedelta(days=2)  # the first grant expired with 6 left: written off
    ledger.commit("acc", ledger.reserve("acc", "k4", 1, "h4").reservation_id)
    ledger.settle("acc")
    ledger.reserve("acc", "k5", 2, "h5")  # held
    with engine.begin() as connection:
        for statement in NEWER_COLUMNS:
            table, _, column, *_ = statement.split()
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    return engine, ledger, now


def test_migration_0003_multiplies_every_amount_by_1000_and_keeps_the_ledger_whole(tmp_path):
    engine, old_ledger, now = _old_ledger(tmp_path)
    old_balance = old_ledger.balance("acc")
    assert (old_balance.available, old_balance.held) == (4, 2)
    before = _amounts(engine)
    with engine.connect() as connection:
        kinds = set(connection.execute(text("SELECT DISTINCT kind FROM ledger_entries")).scalars())
    assert kinds == {"grant", "reserve", "commit", "release", "expire"}

    migrate(engine, "0003_units")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003_units"
    after = _amounts(engine)
    assert after == {table: sorted(tuple(v * 1000 for v in row) for row in rows) for table, rows in before.items()}

    migrate(engine)  # today's ledger reads today's schema (0006_replay's columns)
    ledger = Ledger(engine, hold_timeout=timedelta(seconds=300), clock=lambda: now[0])
    balance = ledger.balance("acc")
    assert (balance.available, balance.held, balance.expiring_next) == (
        old_balance.available * 1000,
        old_balance.held * 1000,
        old_balance.expiring_next * 1000,
    )
    assert balance.next_expiry == old_balance.next_expiry
    # It goes on in millicredits: a 0.25 preview reserved and committed, and everything adds up.
    ledger.commit("acc", ledger.reserve("acc", "k6", 250, "h6").reservation_id)
    entries, balance = ledger.entries("acc", limit=1000)
    assert balance.available == old_balance.available * 1000 - 250
    assert sum(row.amount for row, _ in entries) == balance.available
    assert sum(row.held for row, _ in entries) == balance.held
    engine.dispose()


def test_migration_0003_downgrades_exactly_and_refuses_to_round_fractions(tmp_path):
    engine, _, now = _old_ledger(tmp_path)
    before = _amounts(engine)
    migrate(engine)
    downgrade(engine, "0002")
    assert _amounts(engine) == before, "whole credits come back exactly"

    migrate(engine)
    ledger = Ledger(engine, hold_timeout=timedelta(seconds=300), clock=lambda: now[0])
    ledger.commit("acc", ledger.reserve("acc", "k6", 250, "h6").reservation_id)
    with pytest.raises(RuntimeError, match="fractions of a credit"):
        downgrade(engine, "0002")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003_units"
    engine.dispose()


def test_a_grant_source_with_the_session_mesh_default_signup_credits_is_whole(raw_channel, mesh):
    """Sign-up credits (a decimal setting) arrive in the new unit: 3 credits are "3"."""
    account = new_account(raw_channel, mesh.admin_token)
    balance = cutout_pb2_grpc.CutoutStub(raw_channel).GetBalance(
        account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=30
    )
    assert (balance.available_decimal, balance.available) == ("3", 3)


def test_the_demo_account_is_topped_up_to_exactly_its_credits(mesh: Mesh, tmp_path, astronaut):
    """`make up`'s demo account after a preview (4.75 left) is topped up to 5, not 5.75."""
    from services.launcher import demo_account

    def top_up() -> str:
        # The mesh's own data folder: the demo account's code arrives in its outbox.
        gateway, admin = mesh.gateway.address, mesh.admin_address
        return demo_account(gateway, mesh.admin_token, mesh.data_dir, credits=5, ca_file=mesh.ca_file, admin=admin)

    metadata = [(API_KEY_METADATA, top_up())]
    with mesh.gateway.channel() as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)
        _remove(stub, encode(astronaut.resize((320, 240)), "JPEG"), metadata, size=options_pb2.SIZE_PREVIEW)
        assert stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=metadata).available_decimal == "4.75"
        metadata = [(API_KEY_METADATA, top_up())]
        assert stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=metadata).available_decimal == "5"
