"""Issue 28: every integer and list a client sends is bounded before it reaches SQL or a loop,
and a credential sent twice is refused (one metadata rule for every service)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, rights_pb2
from services.accounts.server import KEYS_LIST, LEDGER_LIST
from services.common import pages
from services.common.settings import API_KEY_METADATA
from services.gateway.results import ACCESS_LOG_LIST
from services.retention.server import RESULTS_LIST
from tests.conftest import new_account

HUGE = [2**64, -(2**64), 10**30, 2**63]


def _lists(stub: cutout_pb2_grpc.CutoutStub, metadata, token: str):
    """Each list call with `token`, by its list's name."""
    return {
        RESULTS_LIST: lambda: stub.ListResults(
            cutout_pb2.ListResultsRequest(page_token=token), metadata=metadata, timeout=30
        ),
        KEYS_LIST: lambda: stub.ListApiKeys(
            account_pb2.ListApiKeysRequest(page_token=token), metadata=metadata, timeout=30
        ),
        LEDGER_LIST: lambda: stub.ListLedger(
            account_pb2.ListLedgerRequest(page_token=token), metadata=metadata, timeout=30
        ),
        ACCESS_LOG_LIST: lambda: stub.ListAccessLog(
            rights_pb2.OwnerAccessLogRequest(page_token=token), metadata=metadata, timeout=30
        ),
    }


POSITIONS = {  # the positions each list's tokens hold, with one integer to make huge
    RESULTS_LIST: lambda n: {"t": n, "id": "x"},
    KEYS_LIST: lambda n: {"t": n, "id": "x"},
    LEDGER_LIST: lambda n: {"seq": n},
    ACCESS_LOG_LIST: lambda n: {"accounts": n, "retention": 0},
}


@pytest.mark.parametrize("list_name", sorted(POSITIONS))
def test_page_tokens_with_integers_beyond_64_bits_are_invalid_argument(mesh, raw_channel, list_name):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    # The owner can make a token of their own list (the MAC binds owner and list, no secret).
    for value in HUGE:
        token = pages.encode(account.account_id, list_name, POSITIONS[list_name](value))
        with pytest.raises(grpc.RpcError) as caught:
            _lists(stub, account.metadata, token)[list_name]()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (value, caught.value.details())
        assert "page_token" in caught.value.details()
    ok = pages.encode(account.account_id, list_name, POSITIONS[list_name](1_700_000_000_000_000))
    _lists(stub, account.metadata, ok)[list_name]()  # in range (2023, in microseconds): served
    long = pages.encode(account.account_id, list_name, {**POSITIONS[list_name](1), "pad": "x" * 5000})
    with pytest.raises(grpc.RpcError) as caught:
        _lists(stub, account.metadata, long)[list_name]()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_update_mask_of_a_thousand_paths_is_invalid_argument(mesh, raw_channel):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    for paths in (["display_name"] * 1000, [f"field_{n}" for n in range(1000)]):
        request = account_pb2.UpdateProfileRequest(
            display_name="Ann", update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdateProfile(request, metadata=account.metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "update_mask" in caught.value.details() and len(caught.value.details()) < 400
    assert stub.GetProfile(account_pb2.GetProfileRequest(), metadata=account.metadata, timeout=30).display_name != "Ann"


def test_two_api_keys_in_one_call_are_refused_everywhere(mesh, raw_channel):
    first = new_account(raw_channel, mesh.admin_token, credits=5)
    second = new_account(raw_channel, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    both = [(API_KEY_METADATA, first.api_key), (API_KEY_METADATA, second.api_key)]
    calls = [
        lambda: stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=both, timeout=30),
        lambda: stub.GetProfile(account_pb2.GetProfileRequest(), metadata=both, timeout=30),
        lambda: stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=both, timeout=30),
        lambda: b"".join(
            chunk.data for chunk in stub.ExportAccount(rights_pb2.ExportAccountRequest(), metadata=both, timeout=30)
        ),
        lambda: stub.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=b"x"), metadata=both, timeout=30),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert API_KEY_METADATA in caught.value.details()
