"""The retention service as a process, over gRPC, on a local folder and on S3 (moto on loopback)."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from cutout.v1 import retention_pb2, retention_pb2_grpc
from services.launcher import ServiceProcess
from tests.conftest import encode
from tests.unit.test_retention_storage import s3_client


def retention_env(tmp_path, blob_store: str, s3_endpoint: str | None = None) -> dict[str, str]:
    env = {
        "CUTOUT_RETENTION_DATABASE_URL": f"sqlite:///{tmp_path / 'retention.db'}",
        "CUTOUT_RETENTION_BLOB_DIR": str(tmp_path / "blobs"),
        "CUTOUT_RETENTION_MASTER_KEYS": f"k1:{base64.b64encode(os.urandom(32)).decode()}",
        "CUTOUT_RETENTION_BLOB_STORE": blob_store,
        "CUTOUT_RETENTION_CHUNK_BYTES": str(64 * 1024),
    }
    if s3_endpoint:
        bucket = f"kept-{os.urandom(4).hex()}"
        s3_client(s3_endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
        )
        env |= {
            "CUTOUT_RETENTION_S3_BUCKET": bucket,
            "CUTOUT_RETENTION_S3_ENDPOINT_URL": s3_endpoint,
            "CUTOUT_RETENTION_S3_REGION": "eu-central-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
    return env


@pytest.fixture(params=["local", "s3"])
def retention(request, tmp_path) -> Iterator[ServiceProcess]:
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "s3" else None
    service = ServiceProcess("retention", retention_env(tmp_path, request.param, endpoint), tmp_path)
    service.start()
    service.wait_serving()
    yield service
    assert service.stop() == 0


def stub(service: ServiceProcess) -> retention_pb2_grpc.RetentionStub:
    return retention_pb2_grpc.RetentionStub(service.channel())


def chunks(account: str, data: bytes, size: int = 100_000, **header: object) -> Iterator[retention_pb2.StoreRequest]:
    yield retention_pb2.StoreRequest(
        header=retention_pb2.StoreHeader(
            account_id=account, plan="free", media_type="image/png", width=512, height=512, **header
        ),
        data=data[:size],
    )
    for start in range(size, len(data), size):
        yield retention_pb2.StoreRequest(data=data[start : start + size])


def fetched(replies) -> tuple[retention_pb2.ResultChunk, bytes]:  # type: ignore[no-untyped-def]
    replies = list(replies)
    return replies[0], b"".join(r.data for r in replies)


def test_store_fetch_list_delete_over_grpc(retention, astronaut):
    data = encode(astronaut.convert("RGBA"), "PNG")
    retention_stub = stub(retention)
    kept = retention_stub.Store(chunks("acct-a", data), timeout=30).result
    assert kept.token.startswith("crt_") and kept.size == len(data)  # never starts with "-", a CLI flag
    assert (kept.expires_at.ToDatetime() - kept.created_at.ToDatetime()).days == 30

    first, body = fetched(retention_stub.FetchByToken(retention_pb2.FetchByTokenRequest(token=kept.token), timeout=30))
    assert body == data and first.result.result_id == kept.result_id and not first.result.token
    _, owned = fetched(
        retention_stub.FetchOwned(retention_pb2.FetchOwnedRequest(account_id="acct-a", result_id=kept.result_id))
    )
    assert owned == data
    with pytest.raises(grpc.RpcError) as caught:
        fetched(
            retention_stub.FetchOwned(retention_pb2.FetchOwnedRequest(account_id="acct-b", result_id=kept.result_id))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = retention_stub.ListOwned(retention_pb2.ListOwnedRequest(account_id="acct-a")).results
    assert [r.result_id for r in listed] == [kept.result_id] and not listed[0].token

    retention_stub.DeleteOwned(retention_pb2.DeleteOwnedRequest(account_id="acct-a", result_id=kept.result_id))
    with pytest.raises(grpc.RpcError) as caught:
        fetched(retention_stub.FetchByToken(retention_pb2.FetchByTokenRequest(token=kept.token)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    log = retention_stub.ListAccessLog(retention_pb2.ListAccessLogRequest(account_id="acct-a")).entries
    assert [(e.actor, e.action) for e in log] == [  # newest first
        ("owner", "delete"),
        ("owner", "read"),
        ("token", "read"),
        ("owner", "store"),
    ]


def test_time_to_live_is_capped_by_the_plan(retention):
    retention_stub = stub(retention)
    shorter = retention_stub.Store(chunks("acct-a", b"x", ttl=duration_pb2.Duration(seconds=3600)), timeout=30).result
    assert shorter.expires_at.seconds - shorter.created_at.seconds == 3600
    with pytest.raises(grpc.RpcError) as caught:
        retention_stub.Store(chunks("acct-a", b"x", ttl=duration_pb2.Duration(seconds=31 * 86400)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 30 days on the free plan" in caught.value.details()


def test_a_store_keeps_the_callers_result_id_so_a_lost_answer_can_be_undone(retention):
    """The gateway names the result before storing it: if the answer never reaches it, it
    still deletes what may have been kept. Ids it could not have made are refused."""
    retention_stub = stub(retention)
    chosen = "0123456789abcdef" * 2
    stored = retention_stub.Store(chunks("acct-c", b"x", result_id=chosen), timeout=30).result
    assert stored.result_id == chosen
    retention_stub.DeleteOwned(retention_pb2.DeleteOwnedRequest(account_id="acct-c", result_id=chosen), timeout=30)
    assert not retention_stub.ListOwned(retention_pb2.ListOwnedRequest(account_id="acct-c"), timeout=30).results
    for bad in ("../etc", "ABCDEF" * 6, "0" * 31):
        with pytest.raises(grpc.RpcError) as caught:
            retention_stub.Store(chunks("acct-c", b"x", result_id=bad), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_killed_in_the_middle_of_a_store_leaves_nothing_listable(tmp_path):
    env = retention_env(tmp_path, "local")
    service = ServiceProcess("retention", env, tmp_path)
    service.start()
    service.wait_serving()
    retention_stub = stub(service)

    def slow_upload() -> Iterator[retention_pb2.StoreRequest]:
        yield from chunks("acct-a", os.urandom(300_000))
        service.process.send_signal(signal.SIGKILL)  # dies with the upload half done
        yield retention_pb2.StoreRequest(data=b"more")

    with pytest.raises(grpc.RpcError) as caught:
        retention_stub.Store(slow_upload(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    service.process.wait(10)

    restarted = ServiceProcess("retention", env, tmp_path)
    restarted.start()
    restarted.wait_serving()
    try:
        listed = stub(restarted).ListOwned(retention_pb2.ListOwnedRequest(account_id="acct-a")).results
        assert list(listed) == []
        assert not any((tmp_path / "blobs").iterdir()), "no bytes of the interrupted store remain"
    finally:
        assert restarted.stop() == 0
