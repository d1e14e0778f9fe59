"""Two cells side by side (the session's mesh is the EU cell; a US cell starts here with its
own Triton, services, ports, databases, folders and PKI), as `make up CELLS=eu,us` runs
them: nothing of one region's accounts reaches the other's."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.common.settings import API_KEY_METADATA
from services.launcher import Mesh, cells_from
from tests.conftest import new_account, sign_up


def reasons(error: grpc.RpcError) -> list[str]:
    return [d.reason for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]


@pytest.fixture(scope="module")
def us_cell(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cell = Mesh(
        data_dir=tmp_path_factory.mktemp("us-cell"),
        env=mesh.env,
        region="us",
        region_endpoints={"eu": mesh.gateway.address, "us": "this cell"},
    )
    cell.start()
    yield cell
    assert all(code == 0 for code in cell.stop().values())


def rows_holding(database: Path, needles: list[str]) -> list[str]:
    """Every row of every table of a SQLite file that holds one of `needles`."""
    found = []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                text = repr(row)
                found += [f"{table}: {needle}" for needle in needles if needle in text]
    return found


def test_an_eu_key_is_unknown_in_the_us_cell_and_nothing_of_it_is_there(mesh, us_cell, raw_channel, astronaut_jpeg):
    eu = new_account(raw_channel, mesh.admin_token, credits=5)
    kept = (
        cutout_pb2_grpc.CutoutStub(raw_channel)
        .RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(
                image=astronaut_jpeg, options=options_pb2.RemoveBackgroundOptions(keep_result=True)
            ),
            metadata=eu.metadata,
            timeout=120,
        )
        .kept
    )
    with us_cell.gateway.channel() as channel:
        us = cutout_pb2_grpc.CutoutStub(channel)
        for call, request in (
            (us.GetBalance, account_pb2.GetBalanceRequest()),
            (us.RemoveBackground, cutout_pb2.RemoveBackgroundRequest(image=astronaut_jpeg)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, metadata=eu.metadata, timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reasons(caught.value) == ["API_KEY_INVALID"]
        # Its password does not log in there either, and its kept result's token is unknown.
        with pytest.raises(grpc.RpcError) as caught:
            us.CreateApiKey(account_pb2.CreateApiKeyRequest(email=eu.email, password=eu.password), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            list(us.FetchResult(cutout_pb2.FetchResultRequest(token=kept.token), timeout=30))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # A sign-up for the EU at the US cell is sent to the EU endpoint.
        with pytest.raises(grpc.RpcError) as caught:
            us.SignUp(
                account_pb2.SignUpRequest(
                    email=f"eu-{secrets.token_hex(4)}@example.com",
                    password=secrets.token_urlsafe(15),
                    region="eu",
                    age_confirmed=True,
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reasons(caught.value) == ["WRONG_REGION"] and mesh.gateway.address in caught.value.details()

        # The other way round: a US account works at home and is unknown in the EU.
        us_account = sign_up(channel, f"us-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(15), "us")
        assert us_account.profile.region == "us"
        us.GetBalance(account_pb2.GetBalanceRequest(), metadata=[(API_KEY_METADATA, us_account.api_key)], timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        cutout_pb2_grpc.CutoutStub(raw_channel).GetBalance(
            account_pb2.GetBalanceRequest(), metadata=[(API_KEY_METADATA, us_account.api_key)], timeout=30
        )
    assert reasons(caught.value) == ["API_KEY_INVALID"]

    # No row of the EU account in the US databases: not its id, e-mail, key hash or result.
    needles = [eu.account_id, eu.email, hashlib.sha256(eu.api_key.encode()).hexdigest(), kept.result_id]
    us_databases = [us_cell.sqlite_path, us_cell.data_dir / "retention" / "retention.db"]
    assert all(path.exists() for path in us_databases)
    for database in us_databases:
        assert rows_holding(database, needles) == [], database
    assert rows_holding(mesh.sqlite_path, [us_account.profile.account_id, us_account.profile.email]) == []
    # Nor anywhere else in the US cell's folder (blobs, outbox, logs, PKI).
    for path in us_cell.data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert eu.email.encode() not in data and eu.account_id.encode() not in data, path
    # Each cell has its own CA.
    assert us_cell.ca_file.read_bytes() != mesh.ca_file.read_bytes()


def test_make_up_cells_gives_each_region_its_own_ports_and_folders(tmp_path):
    eu, us = cells_from("eu,us", 50051, tmp_path)
    assert (eu.region, us.region) == ("eu", "us")
    assert (eu.gateway_port, us.gateway_port) == (50051, 50061)
    assert eu.data_dir != us.data_dir and eu.sqlite_path != us.sqlite_path and eu.outbox != us.outbox
    assert eu.region_endpoints == us.region_endpoints == {"eu": "127.0.0.1:50051", "us": "127.0.0.1:50061"}
    assert eu.cell_env["CUTOUT_ACCOUNTS_REGION"] == "eu" and us.cell_env["CUTOUT_ACCOUNTS_REGION"] == "us"
    (single,) = cells_from("eu", 50051, tmp_path)
    assert single.data_dir == tmp_path and single.region == "eu"
