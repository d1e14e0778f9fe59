"""Keeping results through the gateway: charged together, fetched by token or owner, never by others."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.launcher import gateway_process, retention_process
from tests.conftest import Customer, new_account
from tests.mesh.test_credits import balance, ledger


def keep(channel: grpc.Channel, account: Customer, image: bytes, **options: object):  # type: ignore[no-untyped-def]
    request = cutout_pb2.RemoveBackgroundRequest(
        image=image, options=options_pb2.RemoveBackgroundOptions(keep_result=True, **options)
    )
    return cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(request, metadata=account.metadata, timeout=120)


def fetch(channel: grpc.Channel, metadata=(), **ref: str) -> tuple[options_pb2.KeptResult, bytes]:  # type: ignore[no-untyped-def]
    chunks = list(
        cutout_pb2_grpc.CutoutStub(channel).FetchResult(
            cutout_pb2.FetchResultRequest(**ref), metadata=list(metadata), timeout=60
        )
    )
    return chunks[0].result, b"".join(chunk.data for chunk in chunks)


def status_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_a_kept_result_is_charged_once_and_reachable_by_owner_and_token_only(mesh, raw_channel, astronaut_png):
    owner = new_account(raw_channel, mesh.admin_token, credits=5)
    stranger = new_account(raw_channel, mesh.admin_token, credits=5)
    response = keep(raw_channel, owner, astronaut_png)
    kept = response.kept
    assert kept.result_id and len(kept.token) >= 32
    lifetime = kept.expires_at.ToDatetime() - kept.created_at.ToDatetime()
    assert lifetime == timedelta(days=30)
    assert (kept.media_type, kept.width, kept.height) == ("image/png", 512, 512)
    assert balance(raw_channel, owner).available == 4, "keeping is part of the one charge"

    described, data = fetch(raw_channel, token=kept.token)  # no API key: the token is the capability
    assert data == response.result.image and described.result_id == kept.result_id
    assert not described.token, "a token is shown once, at store time"
    _, owned = fetch(raw_channel, owner.metadata, result_id=kept.result_id)
    assert owned == response.result.image

    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    listed = stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=owner.metadata, timeout=30).results
    assert [r.result_id for r in listed] == [kept.result_id]
    assert list(stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=stranger.metadata, timeout=30).results) == []
    assert (
        status_of(lambda: fetch(raw_channel, stranger.metadata, result_id=kept.result_id)) == grpc.StatusCode.NOT_FOUND
    )
    assert status_of(lambda: fetch(raw_channel, result_id=kept.result_id)) == grpc.StatusCode.UNAUTHENTICATED
    tampered = kept.token[:-1] + ("A" if kept.token[-1] != "A" else "B")  # "xx" would match 1 in 4096 tokens
    assert status_of(lambda: fetch(raw_channel, token=tampered)) == grpc.StatusCode.NOT_FOUND
    assert (
        status_of(
            lambda: stub.DeleteResult(
                cutout_pb2.DeleteResultRequest(result_id=kept.result_id), metadata=stranger.metadata, timeout=30
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )

    stub.DeleteResult(cutout_pb2.DeleteResultRequest(result_id=kept.result_id), metadata=owner.metadata, timeout=30)
    assert status_of(lambda: fetch(raw_channel, token=kept.token)) == grpc.StatusCode.NOT_FOUND


def test_a_shorter_time_to_live_is_kept_and_one_past_the_plan_is_refused_uncharged(mesh, raw_channel, astronaut_png):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    hour = keep(raw_channel, account, astronaut_png, keep_ttl=duration_pb2.Duration(seconds=3600)).kept
    assert hour.expires_at.seconds - hour.created_at.seconds == 3600
    with pytest.raises(grpc.RpcError) as caught:
        keep(raw_channel, account, astronaut_png, keep_ttl=duration_pb2.Duration(seconds=40 * 86400))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "keep_ttl may be at most 30 days" in caught.value.details()
    assert balance(raw_channel, account).available == 4


def list_once_retention_is_back(channel: grpc.Channel, account, within_s: float = 30) -> cutout_pb2.ListResultsResponse:
    """ListResults, retried while the gateway's channel to a restarted retention reconnects.

    The gateway stays SERVING through a retention outage (removals do not need it), so its
    readiness says nothing about retention; the call that needs retention is the probe.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            return cutout_pb2_grpc.CutoutStub(channel).ListResults(
                cutout_pb2.ListResultsRequest(), metadata=account.metadata, timeout=10
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_retention_killed_in_the_middle_of_a_store_fails_the_request_uncharged(mesh, tmp_path, astronaut_png):
    retention = retention_process(tmp_path, tmp_path / "retention", {}, mesh.pki)
    retention.start()
    retention.wait_serving()
    gateway = gateway_process(
        tmp_path,
        {},
        inference=mesh.inference.address,
        accounts=mesh.accounts.address,
        retention=retention.address,
        pki=mesh.pki,
    )
    gateway.start()
    gateway.wait_serving()
    try:
        with gateway.channel() as channel:
            account = new_account(channel, mesh.admin_token, credits=5)
            retention.process.send_signal(signal.SIGSTOP)  # frozen: the store will hang inside it
            request = cutout_pb2.RemoveBackgroundRequest(
                image=astronaut_png, options=options_pb2.RemoveBackgroundOptions(keep_result=True)
            )
            call = cutout_pb2_grpc.CutoutStub(channel).RemoveBackground.future(
                request, metadata=account.metadata, timeout=60
            )
            time.sleep(3)  # authentication, reservation and inference are done well before this
            assert not call.done(), "the request must be waiting on the store"
            retention.process.send_signal(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as caught:
                call.result()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "nothing was charged" in caught.value.details()
            shown = balance(channel, account)
            assert (shown.available, shown.held) == (5, 0)
            assert [e.kind for e in reversed(ledger(channel, account).entries)][-2:] == ["reserve", "release"]

            retention.process.wait(10)
            restarted = retention_process(tmp_path, tmp_path / "retention", {}, mesh.pki)
            restarted.port = retention.port  # where the gateway looks for it
            restarted.start()
            restarted.wait_serving()
            try:
                listed = list_once_retention_is_back(channel, account)
                assert list(listed.results) == [], "nothing that can be listed but not read"
            finally:
                assert restarted.stop() == 0
    finally:
        gateway.stop()
