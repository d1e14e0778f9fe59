"""RemoveBackgroundStream through the real mesh: per-item answers and errors, charges,
flow control under a fast sender, and cancellation."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import status_details
from services.inference.model import PERSON_MODEL
from services.inference.triton_local import model_counts
from services.launcher import Mesh
from tests.conftest import another_gateway, decode, encode, new_account, photo_variants
from tests.mesh.test_credits import assert_ledger_adds_up, balance

MIB = 1024 * 1024


def bad_inputs(astronaut: Image.Image) -> list[tuple[bytes, options_pb2.RemoveBackgroundOptions | None]]:
    """Ten items that must each fail on their own with INVALID_ARGUMENT."""
    jpeg = encode(astronaut.resize((128, 128)), "JPEG", quality=85)
    huge_header = encode(Image.new("L", (1, 1)), "PNG")  # a 1x1 PNG, its header then claims 100000 x 100000
    huge_header = huge_header[:16] + (100_000).to_bytes(4, "big") * 2 + huge_header[24:]
    return [
        (b"", None),
        (b"not an image at all", None),
        (jpeg[: len(jpeg) // 3], None),  # truncated
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, None),  # a PNG signature and garbage
        (huge_header, None),
        (jpeg, options_pb2.RemoveBackgroundOptions(quality=101)),
        (jpeg, options_pb2.RemoveBackgroundOptions(background_color="not-a-colour", format=4)),
        (jpeg, options_pb2.RemoveBackgroundOptions(compression_effort=42)),
        (jpeg, options_pb2.RemoveBackgroundOptions(format=99)),
        (b"GIF89a" + b"\0" * 32, None),
    ]


def test_a_stream_of_200_photos_with_10_bad_ones(mesh: Mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=200)
    good, bad = photo_variants(astronaut, 190), bad_inputs(astronaut)
    requests = [cutout_pb2.StreamRequest(defaults=options_pb2.RemoveBackgroundOptions(format=2))]
    stream_items = [cutout_pb2.StreamItem(id=f"good-{n}", image=photo) for n, photo in enumerate(good)]
    for n, (image, options) in enumerate(bad):
        stream_items.insert(n * 20 + 7, cutout_pb2.StreamItem(id=f"bad-{n}", image=image, options=options))
    requests += [cutout_pb2.StreamRequest(item=item) for item in stream_items]
    assert len(stream_items) == 200

    answers = list(
        cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
            iter(requests), metadata=account.metadata, timeout=300
        )
    )

    *results, last = answers
    assert last.WhichOneof("kind") == "summary"
    assert all(answer.WhichOneof("kind") == "item" for answer in results)
    ids = Counter(answer.item.id for answer in results)
    assert set(ids) == {item.id for item in stream_items} and set(ids.values()) == {1}, "every id answered once"
    ok = {a.item.id: a.item.response for a in results if a.item.WhichOneof("outcome") == "response"}
    failed = {a.item.id: a.item.error for a in results if a.item.WhichOneof("outcome") == "error"}
    assert set(ok) == {f"good-{n}" for n in range(190)}
    assert set(failed) == {f"bad-{n}" for n in range(10)}
    for item_id, error in failed.items():
        assert error.code == code_pb2.INVALID_ARGUMENT, (item_id, error.message)
        assert any(isinstance(d, error_details_pb2.BadRequest) for d in status_details(error)), item_id
    # The defaults applied (WebP) to items without options; every result is the photo it was sent for.
    sizes = {item.id: decode(item.image).size for item in stream_items if item.id in ok}
    for item_id, response in ok.items():
        assert response.result.media_type == "image/webp"
        assert (response.result.width, response.result.height) == sizes[item_id]
        assert 0.05 < response.result.foreground_fraction < 0.95
    summary = last.summary
    assert (summary.items_ok, summary.items_failed, summary.credits_charged) == (190, 10, 190)
    assert summary.elapsed.ToTimedelta().total_seconds() > 0
    shown = balance(raw_channel, account)
    assert (shown.available, shown.held) == (10, 0)
    assert_ledger_adds_up(raw_channel, account, granted=200, spent=190)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) since it started or since `reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: "5" resets the peak to the current RSS


class Sender:
    """Stream requests from a generator that gRPC pulls as fast as the server lets it."""

    def __init__(self, requests: list[cutout_pb2.StreamRequest]) -> None:
        self.requests = requests
        self.pulled = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[cutout_pb2.StreamRequest]:
        for request in self.requests:
            with self._lock:
                self.pulled += 1
            yield request


# The stated bounds (docs/api/streaming.md): under a sender of 12 MP photos as fast as it can,
# the gateway stays under this, and inference under its bound at the default pixel budget.
GATEWAY_STREAM_RSS_MIB = 512
INFERENCE_RSS_MIB = 1536
STREAM_ITEMS_IN_FLIGHT = 16  # GatewaySettings.stream_items_in_flight
TRANSPORT_BUFFER_MIB = 16  # HTTP/2 windows of both peers (measured: about 8 MiB)


def test_a_fast_sender_of_large_photos_waits_and_memory_stays_bounded(mesh: Mesh, raw_channel, astronaut):
    photo = encode(astronaut.resize((4000, 3000)), "JPEG", quality=92)  # 12 MP
    count = 48
    account = new_account(raw_channel, mesh.admin_token, credits=count)
    pids = {"gateway": mesh.gateway.process.pid, "inference": mesh.inference.process.pid}
    for pid in pids.values():
        reset_peak_rss(pid)
    sender = Sender(
        [cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=str(n), image=photo)) for n in range(count)]
    )

    answered, most_ahead = 0, 0
    # A connection of its own: the session's shared channel has carried earlier tests'
    # traffic, and HTTP/2 flow control sizes a connection's windows by what it has seen.
    with mesh.gateway.channel() as channel:
        for answer in cutout_pb2_grpc.CutoutStub(channel).RemoveBackgroundStream(
            iter(sender), metadata=account.metadata, timeout=600
        ):
            if answer.WhichOneof("kind") == "item":
                assert answer.item.WhichOneof("outcome") == "response", answer.item.error.message
                answered += 1
                most_ahead = max(most_ahead, sender.pulled - answered)
    peaks = {name: peak_rss_mib(pid) for name, pid in pids.items()}
    print(f"at most {most_ahead} items ahead of the answers, {len(photo) / MIB:.1f} MiB each; peak RSS MiB {peaks}")

    assert answered == count
    # The client could not run ahead: the gateway holds its window of items plus the one
    # waiting for room; beyond that, only what HTTP/2 flow control lets gRPC buffer.
    buffered_mib = (most_ahead - (STREAM_ITEMS_IN_FLIGHT + 1)) * len(photo) / MIB
    assert buffered_mib <= TRANSPORT_BUFFER_MIB
    assert peaks["gateway"] < GATEWAY_STREAM_RSS_MIB
    assert peaks["inference"] < INFERENCE_RSS_MIB


def test_cancelling_a_stream_stops_its_work_and_charges_nothing_unfinished(mesh: Mesh, raw_channel, astronaut):
    photo = encode(astronaut.resize((1000, 1000)), "JPEG", quality=90)
    count = 80
    account = new_account(raw_channel, mesh.admin_token, credits=count)
    requests = [cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=str(n), image=photo)) for n in range(count)]
    call = cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
        iter(requests), metadata=account.metadata, timeout=120
    )
    received = 0
    for answer in call:
        assert answer.item.WhichOneof("outcome") == "response"
        received += 1
        if received == 5:
            break
    inferred_at_cancel, _ = model_counts(mesh.triton, PERSON_MODEL)
    call.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED

    # Every hold is settled promptly: committed for delivered items, released for the rest.
    while balance(raw_channel, account).held and time.monotonic() - cancelled_at < 10:
        time.sleep(0.05)
    settled_s = time.monotonic() - cancelled_at
    shown = balance(raw_channel, account)
    charged = count - shown.available
    time.sleep(1.0)  # nothing of the stream runs on after that
    inferred_after, _ = model_counts(mesh.triton, PERSON_MODEL)
    time.sleep(1.0)
    print(f"received {received}, charged {charged}, settled {settled_s:.2f}s after the cancel")
    assert shown.held == 0
    assert model_counts(mesh.triton, PERSON_MODEL)[0] == inferred_after
    # At most the items in flight at the cancel went on through the model; the rest never ran.
    assert inferred_after - inferred_at_cancel <= STREAM_ITEMS_IN_FLIGHT
    # Charged: exactly the items whose results were sent (5 read, a window's worth at most unread).
    assert received <= charged <= received + STREAM_ITEMS_IN_FLIGHT
    assert charged < count
    assert_ledger_adds_up(raw_channel, account, granted=count, spent=charged)


def stream(channel, metadata, requests, timeout: float = 120) -> list[cutout_pb2.StreamResponse]:
    return list(
        cutout_pb2_grpc.CutoutStub(channel).RemoveBackgroundStream(iter(requests), metadata=metadata, timeout=timeout)
    )


def test_a_stream_without_a_valid_key_is_refused_before_any_item(raw_channel, astronaut):
    item = cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="a", image=encode(astronaut, "PNG")))
    for metadata in ([], [("x-api-key", "ck_" + "0" * 43)]):
        with pytest.raises(grpc.RpcError) as caught:
            stream(raw_channel, metadata, [item])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()


def test_items_beyond_the_balance_or_without_an_id_fail_on_their_own(mesh: Mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    photos = photo_variants(astronaut, 6, seed=11)
    answers = stream(
        raw_channel,
        account.metadata,
        [
            cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=f"p{n}", image=photo))
            for n, photo in enumerate(photos)
        ]
        + [cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="", image=photos[0]))],
    )
    *results, last = answers
    outcomes = Counter(
        "ok" if a.item.WhichOneof("outcome") == "response" else code_pb2.Code.Name(a.item.error.code) for a in results
    )
    assert outcomes == {"ok": 3, "RESOURCE_EXHAUSTED": 3, "INVALID_ARGUMENT": 1}
    exhausted = [a.item.error for a in results if a.item.error.code == code_pb2.RESOURCE_EXHAUSTED]
    for error in exhausted:
        reasons = [d.reason for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
        assert reasons == ["INSUFFICIENT_CREDITS"] and "not enough credits" in error.message
    assert (last.summary.items_ok, last.summary.items_failed, last.summary.credits_charged) == (3, 4, 3)
    assert balance(raw_channel, account).available == 0


def test_an_id_already_in_flight_is_refused_and_the_first_item_keeps_it(mesh: Mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    slow = encode(astronaut.resize((2000, 2000)), "PNG")  # in flight while the next two are read
    small = photo_variants(astronaut, 1, seed=2)[0]
    items = [cutout_pb2.StreamItem(id="same", image=image) for image in (slow, small, small)]
    *results, last = stream(raw_channel, account.metadata, [cutout_pb2.StreamRequest(item=i) for i in items])
    assert [a.item.id for a in results] == ["same"] * 3
    refused = [a.item.error for a in results if a.item.WhichOneof("outcome") == "error"]
    assert len(refused) == 2 and all(e.code == code_pb2.INVALID_ARGUMENT for e in refused)
    for error in refused:
        assert [d.reason for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo)] == [
            "DUPLICATE_ITEM_ID"
        ]
    assert (last.summary.items_ok, last.summary.items_failed, last.summary.credits_charged) == (1, 2, 1)


def test_a_key_revoked_during_a_stream_ends_it(mesh: Mesh, raw_channel, astronaut, tmp_path):
    """A gateway that re-checks the key before every item: the revocation ends the stream."""
    with another_gateway(mesh, tmp_path, {**mesh.env, "CUTOUT_GATEWAY_STREAM_REAUTHENTICATE_S": "0"}) as gateway:
        account = new_account(raw_channel, mesh.admin_token, credits=10)
        second = cutout_pb2_grpc.CutoutStub(raw_channel).CreateApiKey(
            account_pb2.CreateApiKeyRequest(name="stream", password=account.password),
            metadata=account.metadata,
            timeout=30,
        )
        photos = photo_variants(astronaut, 6, seed=12)
        first_answered, revoked = threading.Event(), threading.Event()

        def requests() -> Iterator[cutout_pb2.StreamRequest]:
            yield cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="first", image=photos[0]))
            first_answered.wait(60)
            revoked.wait(60)
            for n, photo in enumerate(photos[1:]):
                yield cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=f"later-{n}", image=photo))

        with gateway.channel() as channel:
            call = cutout_pb2_grpc.CutoutStub(channel).RemoveBackgroundStream(
                requests(), metadata=[("x-api-key", second.api_key)], timeout=120
            )
            first = next(call)
            assert first.item.id == "first" and first.item.WhichOneof("outcome") == "response"
            first_answered.set()
            cutout_pb2_grpc.CutoutStub(raw_channel).RevokeApiKey(
                account_pb2.RevokeApiKeyRequest(id=second.key.id, password=account.password),
                metadata=account.metadata,
                timeout=30,
            )
            revoked.set()
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in caught.value.details()
        shown = balance(raw_channel, account)
        assert (shown.available, shown.held) == (9, 0)
