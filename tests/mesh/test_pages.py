"""AIP-158 pages and AIP-134 update masks, through the real mesh (gateway, accounts, retention)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2, rights_pb2
from services.common import pages
from tests.conftest import Customer, new_account


@pytest.fixture
def public(raw_channel: grpc.Channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(raw_channel)


def _grant(mesh: Any, account: Customer, amount: int) -> None:
    with mesh.admin.channel() as channel:
        cutout_pb2_grpc.AdminStub(channel).GrantCredits(
            account_pb2.GrantCreditsRequest(account_id=account.account_id, amount=amount),
            metadata=mesh.admin.metadata,
            timeout=30,
        )


def _every_page(call: Callable[..., Any], request: Any, items: str, metadata: Any, between=None) -> list[list[Any]]:
    """The items of each page, following next_page_token; `between(n)` runs after page n."""
    shown: list[list[Any]] = []
    while True:
        page = call(request, metadata=metadata, timeout=30)
        shown.append(list(getattr(page, items)))
        if between is not None:
            between(len(shown))
        if not page.next_page_token:
            return shown
        request.page_token = page.next_page_token


def _code(call: Callable[..., Any], request: Any, metadata: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    return caught.value


def test_ledger_pages_cover_every_entry_once_while_entries_are_added(mesh, raw_channel, public):
    account = new_account(raw_channel, mesh.admin_token)
    for amount in range(1, 6):
        _grant(mesh, account, amount)
    before = public.ListLedger(account_pb2.ListLedgerRequest(page_size=1000), metadata=account.metadata, timeout=30)
    assert not before.next_page_token and len(before.entries) >= 6  # sign-up grant and five more

    shown = _every_page(
        public.ListLedger,
        account_pb2.ListLedgerRequest(page_size=2),
        "entries",
        account.metadata,
        between=lambda page: _grant(mesh, account, 10 + page),  # newer than every page's cursor
    )
    ids = [entry.id for page in shown for entry in page]
    assert all(len(page) <= 2 for page in shown)
    assert len(ids) == len(set(ids)), "an entry came twice"
    assert ids == [entry.id for entry in before.entries], "every entry there at the start, once, in order"


def test_key_and_result_pages_and_old_limit(mesh, raw_channel, public, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=50)
    for name in ("second", "third"):
        public.CreateApiKey(
            account_pb2.CreateApiKeyRequest(name=name, password=account.password),
            metadata=account.metadata,
            timeout=30,
        )
    keys = _every_page(public.ListApiKeys, account_pb2.ListApiKeysRequest(page_size=1), "keys", account.metadata)
    assert [len(page) for page in keys] == [1, 1, 1]
    assert [key.name for page in keys for key in page] == ["first", "second", "third"]  # oldest first

    small = io.BytesIO()
    astronaut.resize((64, 64)).save(small, "PNG")

    def keep() -> str:
        response = public.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(
                image=small.getvalue(), options=options_pb2.RemoveBackgroundOptions(keep_result=True)
            ),
            metadata=account.metadata,
            timeout=60,
        )
        return response.kept.result_id

    kept = [keep() for _ in range(3)]
    added: list[str] = []
    shown = _every_page(
        public.ListResults,
        cutout_pb2.ListResultsRequest(page_size=2),
        "results",
        account.metadata,
        between=lambda page: added.append(keep()) if page == 1 else None,
    )
    ids = [result.result_id for page in shown for result in page]
    assert ids == kept[::-1], "newest first, each once; the one kept between pages is not among the older pages"
    assert added and added[0] not in ids

    # An older client's `limit` still works; page_size wins when both are given.
    old = public.ListResults(cutout_pb2.ListResultsRequest(limit=1), metadata=account.metadata, timeout=30)
    both = public.ListResults(
        cutout_pb2.ListResultsRequest(limit=1, page_size=3), metadata=account.metadata, timeout=30
    )
    assert (len(old.results), len(both.results)) == (1, 3) and old.next_page_token


def test_access_log_pages_merge_both_services_once(mesh, raw_channel, public, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    small = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(small, "PNG")
    kept = public.RemoveBackground(
        cutout_pb2.RemoveBackgroundRequest(
            image=small.getvalue(), options=options_pb2.RemoveBackgroundOptions(keep_result=True)
        ),
        metadata=account.metadata,
        timeout=60,
    ).kept
    list(public.FetchResult(cutout_pb2.FetchResultRequest(result_id=kept.result_id), metadata=account.metadata))
    for _ in range(3):  # accounts' half: each read is logged
        public.GetProfile(account_pb2.GetProfileRequest(), metadata=account.metadata, timeout=30)
    whole = public.ListAccessLog(rights_pb2.OwnerAccessLogRequest(), metadata=account.metadata, timeout=30)
    assert not whole.next_page_token
    assert {record.service for record in whole.entries} == {"accounts", "retention"}

    shown = _every_page(
        public.ListAccessLog, rights_pb2.OwnerAccessLogRequest(page_size=2), "entries", account.metadata
    )
    flat = [record for page in shown for record in page]
    assert all(len(page) <= 2 for page in shown)
    assert [r.SerializeToString() for r in flat] == [r.SerializeToString() for r in whole.entries]


def test_tokens_are_bound_to_their_account_and_list_and_refused_when_altered(mesh, raw_channel, public):
    owner = new_account(raw_channel, mesh.admin_token)
    other = new_account(raw_channel, mesh.admin_token)
    for amount in (1, 2):
        _grant(mesh, owner, amount)
    first = public.ListLedger(account_pb2.ListLedgerRequest(page_size=1), metadata=owner.metadata, timeout=30)
    token = first.next_page_token
    assert token

    refusals = {
        "another account's": (public.ListLedger, account_pb2.ListLedgerRequest(page_token=token), other.metadata),
        "another list's": (public.ListApiKeys, account_pb2.ListApiKeysRequest(page_token=token), owner.metadata),
        "altered": (
            public.ListLedger,
            account_pb2.ListLedgerRequest(page_token=pages.encode(owner.account_id, "other", {"seq": 1})),
            owner.metadata,
        ),
        "cut short": (public.ListLedger, account_pb2.ListLedgerRequest(page_token=token[:-3]), owner.metadata),
        "not base64": (public.ListLedger, account_pb2.ListLedgerRequest(page_token="%%%.!!"), owner.metadata),
    }
    for what, (call, request, metadata) in refusals.items():
        error = _code(call, request, metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert "page_token" in error.details() and "next_page_token" in error.details(), what
    results = _code(public.ListResults, cutout_pb2.ListResultsRequest(page_token=token), owner.metadata)
    assert results.code() == grpc.StatusCode.INVALID_ARGUMENT  # retention checks its own tokens

    negative = _code(public.ListLedger, account_pb2.ListLedgerRequest(page_size=-1), owner.metadata)
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in negative.details()
    # The same token still works for its owner (a refusal changes nothing).
    again = public.ListLedger(account_pb2.ListLedgerRequest(page_token=token), metadata=owner.metadata, timeout=30)
    assert again.entries and again.entries[0].id != first.entries[0].id
    # Larger than the maximum is cut to it, not refused.
    public.ListLedger(account_pb2.ListLedgerRequest(page_size=1_000_000), metadata=owner.metadata, timeout=30)


def test_update_mask_changes_only_its_paths(mesh, raw_channel, public):
    account = new_account(raw_channel, mesh.admin_token)

    def update(**fields: Any) -> account_pb2.Profile:
        return public.UpdateProfile(account_pb2.UpdateProfileRequest(**fields), metadata=account.metadata, timeout=30)

    changed = update(
        display_name="Masked", marketing_opt_in=True, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
    )
    assert (changed.display_name, changed.marketing_opt_in) == ("Masked", False)
    everything = update(display_name="All", marketing_opt_in=True, update_mask=field_mask_pb2.FieldMask(paths=["*"]))
    assert (everything.display_name, everything.marketing_opt_in, everything.processing_restricted) == (
        "All",
        True,
        False,
    )
    # The mask wins over the older list when both are given.
    both = update(
        display_name="Mask wins",
        marketing_opt_in=False,
        update_fields=["marketing_opt_in"],
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )
    assert (both.display_name, both.marketing_opt_in) == ("Mask wins", True)
    for fields, named in [
        ({"update_mask": field_mask_pb2.FieldMask(paths=["region"])}, "'region'"),
        ({"update_mask": field_mask_pb2.FieldMask(paths=["display_name", "email"])}, "'email'"),
        ({}, "no path"),  # neither mask nor list: refused, as before masks existed
    ]:
        error = _code(public.UpdateProfile, account_pb2.UpdateProfileRequest(**fields), account.metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and named in error.details(), error.details()
