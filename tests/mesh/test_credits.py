"""Charging through the real gateway: never negative under concurrency, one charge per
idempotency key, nothing charged for a failure; on SQLite (the session mesh) and on
PostgreSQL (a second accounts + gateway pair on a fresh database, same inference)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.accounts.admin import admins_line
from services.common.errors import error_details
from services.launcher import (
    AdminEndpoint,
    Mesh,
    ServiceProcess,
    accounts_process,
    admin_address,
    gateway_process,
    write_secret,
)
from tests.conftest import Customer, encode, new_account


@pytest.fixture(scope="session")
def small_jpeg(astronaut) -> bytes:
    return encode(astronaut.resize((64, 64)), "JPEG", quality=85)


@pytest.fixture(scope="session")
def postgres_gateway(mesh: Mesh, postgres_url: str, tmp_path_factory) -> Iterator[tuple[ServiceProcess, AdminEndpoint]]:
    """Accounts on PostgreSQL and a gateway in front of it, sharing the session's inference;
    and that accounts' admin endpoint."""
    run_dir = tmp_path_factory.mktemp("postgres-pair")
    admins = write_secret(run_dir / "admins", admins_line(mesh.admin_name, mesh.admin_token) + "\n")
    accounts = accounts_process(run_dir, postgres_url, admins, mesh.env, mesh.pki, retention=mesh.retention.address)
    gateway = gateway_process(
        run_dir,
        mesh.env,
        inference=mesh.inference.address,
        accounts="",
        retention=mesh.retention.address,
        pki=mesh.pki,
    )
    try:
        accounts.start()
        accounts.wait_serving()
        gateway.env["CUTOUT_GATEWAY_ACCOUNTS_TARGET"] = accounts.address
        gateway.start()
        gateway.wait_serving()
        yield gateway, AdminEndpoint(admin_address(run_dir), mesh.admin_token, mesh.pki)
    finally:
        assert gateway.stop() in (0, None)
        assert accounts.stop() in (0, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, mesh: Mesh) -> Iterator[tuple[grpc.Channel, AdminEndpoint]]:
    """A channel to a gateway whose accounts service uses the given database, and its admin endpoint."""
    if request.param == "sqlite":
        gateway, admin = mesh.gateway, mesh.admin
    else:
        gateway, admin = request.getfixturevalue("postgres_gateway")
    with gateway.channel() as channel:
        yield channel, admin


def remove(
    channel: grpc.Channel, account: Customer, image: bytes, key: str = ""
) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, idempotency_key=key)
    return cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(request, metadata=account.metadata, timeout=120)


def balance(channel: grpc.Channel, account: Customer) -> account_pb2.Balance:
    return cutout_pb2_grpc.CutoutStub(channel).GetBalance(
        account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=30
    )


def ledger(channel: grpc.Channel, account: Customer) -> account_pb2.ListLedgerResponse:
    return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(limit=1000), metadata=account.metadata, timeout=30
    )


def assert_ledger_adds_up(channel: grpc.Channel, account: Customer, *, granted: int, spent: int) -> None:
    history = ledger(channel, account)
    entries = history.entries
    kinds = Counter(entry.kind for entry in entries)
    assert sum(e.amount for e in entries) == history.balance.available
    assert sum(e.held for e in entries) == history.balance.held
    assert sum(e.amount for e in entries if e.kind == "grant") == granted
    # Spent: what was committed, less what was refunded (a result committed, then never
    # handed over, e.g. its stream cancelled between the commit and the write).
    refunded = sum(e.amount for e in entries if e.kind == "refund")
    assert -sum(e.held for e in entries if e.kind == "commit") - refunded == spent
    if history.balance.held == 0:  # every reservation ended in a commit or a release
        assert kinds["reserve"] == kinds["commit"] + kinds["release"]
    # One commit per reservation at most: no double charge.
    commits = Counter(e.reservation_id for e in entries if e.kind == "commit")
    assert all(count == 1 for count in commits.values())
    # A refund undoes one commit of its own reservation, once.
    refunds = Counter(e.reservation_id for e in entries if e.kind == "refund")
    assert all(count == 1 and reservation in commits for reservation, count in refunds.items())


def test_fifty_removals_at_once_on_a_balance_of_twenty(backend, small_jpeg):
    channel, admin_token = backend
    account = new_account(channel, admin_token, credits=20)
    stub = cutout_pb2_grpc.CutoutStub(channel)
    calls = [
        stub.RemoveBackground.future(
            cutout_pb2.RemoveBackgroundRequest(image=small_jpeg), metadata=account.metadata, timeout=120
        )
        for _ in range(50)
    ]
    succeeded, exhausted = 0, []
    for call in calls:
        try:
            assert call.result().result.width == 64
            succeeded += 1
        except grpc.RpcError as error:
            exhausted.append(error)
    assert succeeded == 20
    assert len(exhausted) == 30
    for error in exhausted:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        details = error_details(error)
        assert [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)] == ["INSUFFICIENT_CREDITS"]
        quota = [d for d in details if isinstance(d, error_details_pb2.QuotaFailure)]
        assert quota and quota[0].violations[0].subject == "credits"
        assert "not enough credits" in error.details()
    shown = balance(channel, account)
    assert (shown.available, shown.held) == (0, 0)
    assert_ledger_adds_up(channel, account, granted=20, spent=20)


def test_the_same_idempotency_key_is_charged_once(backend, small_jpeg):
    channel, admin_token = backend
    account = new_account(channel, admin_token, credits=10)
    key = f"order-{uuid.uuid4()}"
    first = remove(channel, account, small_jpeg, key)
    assert first.result.image
    replayed = remove(channel, account, small_jpeg, key)  # served and charged: replayed free (issue 28)
    assert replayed.idempotent_replay and replayed.result.image == first.result.image
    assert balance(channel, account).available == 9

    # Concurrently: eight calls with one new key, one served and charged, the others refused
    # while it runs (in progress) or replayed free once it was served (a few per key, then refused).
    key = f"order-{uuid.uuid4()}"
    stub = cutout_pb2_grpc.CutoutStub(channel)
    request = cutout_pb2.RemoveBackgroundRequest(image=small_jpeg, idempotency_key=key)
    calls = [stub.RemoveBackground.future(request, metadata=account.metadata, timeout=120) for _ in range(8)]
    served = 0
    for call in calls:
        try:
            served += not call.result().idempotent_replay
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS), error.details()
    assert served == 1
    shown = balance(channel, account)
    assert (shown.available, shown.held) == (8, 0)
    assert_ledger_adds_up(channel, account, granted=10, spent=2)
    keys = Counter(e.idempotency_key for e in ledger(channel, account).entries if e.kind == "commit")
    assert keys[key] == 1


def test_an_idempotency_key_reused_for_another_request_is_refused(backend, small_jpeg, astronaut_jpeg):
    channel, admin_token = backend
    account = new_account(channel, admin_token, credits=5)
    remove(channel, account, small_jpeg, "same-key")
    with pytest.raises(grpc.RpcError) as caught:
        remove(channel, account, astronaut_jpeg, "same-key")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency key reused for a different request" in caught.value.details()
    assert balance(channel, account).available == 4


def test_a_failed_removal_is_not_charged_and_a_retry_after_it_is(backend, small_jpeg):
    channel, admin_token = backend
    account = new_account(channel, admin_token, credits=5)
    for _ in range(2):  # the same failing request twice under one key: each released
        with pytest.raises(grpc.RpcError) as caught:
            remove(channel, account, b"not an image at all", "bad-one")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shown = balance(channel, account)
    assert (shown.available, shown.held) == (5, 0)
    kinds = [e.kind for e in reversed(ledger(channel, account).entries)]
    assert kinds == ["grant", "grant"], "refused before anything was reserved"

    remove(channel, account, small_jpeg, "good-one")
    assert balance(channel, account).available == 4
    assert_ledger_adds_up(channel, account, granted=5, spent=1)


def test_a_cancelled_removal_is_released_not_charged(mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    # 12 MP at the most compression effort: seconds of work, so the call is still inside when cancelled.
    big = encode(astronaut.resize((4000, 3000)), "JPEG", quality=90)
    request = cutout_pb2.RemoveBackgroundRequest(
        image=big, options=options_pb2.RemoveBackgroundOptions(compression_effort=9)
    )
    call = cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackground.future(
        request, metadata=account.metadata, timeout=120
    )
    deadline = time.monotonic() + 10
    while balance(raw_channel, account).held == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert balance(raw_channel, account).held == 1, "the credit is held while the call runs"
    call.cancel()
    deadline = time.monotonic() + 15
    while balance(raw_channel, account).held and time.monotonic() < deadline:
        time.sleep(0.1)
    shown = balance(raw_channel, account)
    assert (shown.available, shown.held) == (5, 0)
    assert_ledger_adds_up(raw_channel, account, granted=5, spent=0)
