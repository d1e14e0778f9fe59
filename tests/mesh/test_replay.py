"""Issue 28: a retry always gets what it paid for. A request replayed with the same idempotency
key and the same content gets the same result (the same bytes, the same kept result id), free,
a few times per key; other content under the key stays IDEMPOTENCY_KEY_REUSED. And what is
kept of a request (its fingerprint) cannot be checked against a known photo."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from PIL import Image

from cutout.transport import channel_options
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.gateway.charging import request_hash
from services.launcher import Mesh
from tests.conftest import Customer, encode, new_account
from tests.faultproxy import FaultProxy
from tests.mesh.test_airtight import _charged, _ledger, _reason
from tests.mesh.test_credits import balance

REPLAYS_PER_KEY = 3  # accounts' default


@pytest.fixture(scope="module")
def photo(astronaut: Image.Image) -> bytes:
    return encode(astronaut.resize((384, 384)), "JPEG", quality=90)


@pytest.fixture
def proxied_gateway(mesh: Mesh) -> Iterator[tuple[FaultProxy, grpc.Channel]]:
    """A channel to the session's gateway through a fault proxy (TLS passes through it)."""
    proxy = FaultProxy(mesh.gateway.address).start()
    channel = grpc.secure_channel(proxy.address, mesh.gateway.credentials(), options=channel_options())
    try:
        yield proxy, channel
    finally:
        channel.close()
        proxy.stop()


def remove(channel: grpc.Channel, account: Customer, request: cutout_pb2.RemoveBackgroundRequest):
    return cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(request, metadata=account.metadata, timeout=120)


def test_an_answer_lost_after_it_was_served_is_replayed_with_the_same_bytes_and_charged_once(
    mesh, raw_channel, proxied_gateway, photo
):
    proxy, channel = proxied_gateway
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    request = cutout_pb2.RemoveBackgroundRequest(image=photo, idempotency_key=f"lost-{uuid.uuid4()}")
    balance(channel, account)  # the connection is up before the answer is dropped
    # The gateway commits and hands the answer to gRPC; the connection drops once 16 KiB of it
    # have passed the gateway, before the caller has any of it.
    proxy.drop_answer(after_bytes=16 * 1024)
    with pytest.raises(grpc.RpcError) as lost:
        remove(channel, account, request)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and proxy.dropped.is_set()
    assert _charged(raw_channel, account) == 1, "the answer was handed over, so it is charged"

    retried = remove(channel, account, request)  # a new connection, the same key
    assert retried.idempotent_replay and retried.credits_charged_decimal == "0"
    made_anew = remove(raw_channel, account, cutout_pb2.RemoveBackgroundRequest(image=photo))  # no key: charged
    assert retried.result.image == made_anew.result.image, "the replay is the same picture, byte for byte"
    assert (retried.result.width, retried.result.height) == (384, 384)
    assert _charged(raw_channel, account) == 2  # the lost call once, the keyless call once; the replay nothing
    assert balance(raw_channel, account).held == 0


def test_a_served_call_replayed_gets_the_same_result_free_a_few_times_then_already_served(mesh, raw_channel, photo):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo,
        options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_WEBP),
        idempotency_key="replayed",
    )
    first = remove(raw_channel, account, request)
    assert (first.credits_charged_decimal, first.idempotent_replay) == ("1", False)
    for _ in range(REPLAYS_PER_KEY):
        again = remove(raw_channel, account, request)
        assert again.idempotent_replay and again.credits_charged_decimal == "0"
        assert again.result.image == first.result.image and again.result.media_type == "image/webp"
        assert again.result.foreground_box == first.result.foreground_box
    # Each replay makes the picture again, so a key has a few; then it is refused, still free.
    with pytest.raises(grpc.RpcError) as refused:
        remove(raw_channel, account, request)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS and _reason(refused.value) == "ALREADY_SERVED"
    # Other content under the key is another request: refused as before.
    other = cutout_pb2.RemoveBackgroundRequest(image=photo, idempotency_key="replayed")
    with pytest.raises(grpc.RpcError) as reused:
        remove(raw_channel, account, other)
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(reused.value) == "IDEMPOTENCY_KEY_REUSED"
    assert _charged(raw_channel, account) == 1 and balance(raw_channel, account).available == 4
    kinds = Counter(entry.kind for entry in _ledger(raw_channel, account).entries)
    assert (kinds["reserve"], kinds["commit"], kinds["release"]) == (1, 1, 0), "a replay writes no ledger entry"


def test_a_replay_on_a_stream_is_served_free_too(mesh, raw_channel, photo):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    answers = []
    for name in ("a", "b"):  # one after the other, so that the second replays a served first
        item = cutout_pb2.StreamItem(id=name, image=photo, idempotency_key="streamed")
        answers += list(
            cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
                iter([cutout_pb2.StreamRequest(item=item)]), metadata=account.metadata, timeout=120
            )
        )
    first, second = (a.item.response for a in answers if a.WhichOneof("kind") == "item")
    assert (first.idempotent_replay, second.idempotent_replay) == (False, True)
    assert second.result.image == first.result.image
    assert [a.summary.credits_charged_decimal for a in answers if a.WhichOneof("kind") == "summary"] == ["1", "0"]
    assert balance(raw_channel, account).available == 4


def test_a_kept_call_replayed_names_the_same_kept_result_and_keeps_nothing_twice(mesh, raw_channel, photo):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo, options=options_pb2.RemoveBackgroundOptions(keep_result=True), idempotency_key="kept-once"
    )
    first = remove(raw_channel, account, request)
    assert first.kept.result_id and first.kept.token
    again = remove(raw_channel, account, request)
    assert again.idempotent_replay and again.credits_charged_decimal == "0"
    assert again.kept.result_id == first.kept.result_id and again.kept.expires_at == first.kept.expires_at
    assert again.kept.token == "", "the token is shown once"
    assert again.result.image == first.result.image
    listed = stub.ListResults(cutout_pb2.ListResultsRequest(page_size=100), metadata=account.metadata, timeout=30)
    assert [kept.result_id for kept in listed.results] == [first.kept.result_id]
    fetched = b"".join(
        chunk.data
        for chunk in stub.FetchResult(
            cutout_pb2.FetchResultRequest(result_id=first.kept.result_id), metadata=account.metadata, timeout=30
        )
    )
    assert fetched == first.result.image
    # Deleted by its owner: a replay no longer has a result to name, so it is refused, free.
    stub.DeleteResult(
        cutout_pb2.DeleteResultRequest(result_id=first.kept.result_id), metadata=account.metadata, timeout=30
    )
    with pytest.raises(grpc.RpcError) as gone:
        remove(raw_channel, account, request)
    assert gone.value.code() == grpc.StatusCode.ALREADY_EXISTS and "deleted" in gone.value.details()
    listed = stub.ListResults(cutout_pb2.ListResultsRequest(page_size=100), metadata=account.metadata, timeout=30)
    assert list(listed.results) == [] and _charged(raw_channel, account) == 1


def _text_in_sqlite(path) -> str:
    """Every value of every table of a SQLite file, as one text."""
    values: list[str] = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                values += [value.hex() if isinstance(value, bytes) else str(value) for value in row]
    return "\n".join(values)


def test_no_sha256_of_an_image_can_be_recomputed_and_found_in_the_databases(mesh, raw_channel, photo):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    requests = [
        cutout_pb2.RemoveBackgroundRequest(image=photo, idempotency_key="fingerprinted"),
        cutout_pb2.RemoveBackgroundRequest(
            image=photo,
            options=options_pb2.RemoveBackgroundOptions(keep_result=True),
            idempotency_key="fingerprinted-kept",
        ),
    ]
    for request in requests:
        remove(raw_channel, account, request)
    stored = _text_in_sqlite(mesh.sqlite_path) + _text_in_sqlite(mesh.data_dir / "retention" / "retention.db")
    assert "fingerprinted" in stored  # the keys are there (they live IDEMPOTENCY_HOURS)
    for request in requests:
        # What anyone holding the photo could compute: the request's sha256, the image's alone.
        for digest in (request_hash(request), hashlib.sha256(photo).hexdigest()):
            assert digest not in stored
