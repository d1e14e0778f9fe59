"""Issue 19's cases, each through the real mesh: every result handed to a caller is charged
exactly once (shared keys, replays, cancelled stream items, an accounts service that stalls
after the reserve), failures write nothing, hostile options get INVALID_ARGUMENT, and inputs
of every mode Pillow decodes come out right with nothing of their metadata."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.launcher import Mesh, ServiceProcess
from tests.conftest import Customer, another_gateway, decode, encode, new_account
from tests.faultproxy import FaultProxy
from tests.mesh.test_stream import STREAM_ITEMS_IN_FLIGHT


def _reason(error: grpc.RpcError) -> str | None:
    infos = [d for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else None


def _ledger(channel: grpc.Channel, account: Customer) -> account_pb2.ListLedgerResponse:
    return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(limit=1000), metadata=account.metadata, timeout=30
    )


def _charged(channel: grpc.Channel, account: Customer) -> int:
    """Credits charged for good: commits less refunds."""
    entries = _ledger(channel, account).entries
    committed = -sum(e.held for e in entries if e.kind == "commit")
    refunded = sum(e.amount for e in entries if e.kind == "refund")
    return committed - refunded


def _held(channel: grpc.Channel, account: Customer) -> int:
    return _ledger(channel, account).balance.held


def _wait_held(channel: grpc.Channel, account: Customer, held: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while _held(channel, account) != held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _held(channel, account) == held


@pytest.fixture(scope="module")
def slow_jpeg(astronaut: Image.Image) -> bytes:
    """12 MP: seconds of work at the most compression effort, so calls overlap it."""
    return encode(astronaut.resize((4000, 3000)), "JPEG", quality=90)


SLOW = options_pb2.RemoveBackgroundOptions(compression_effort=9)


# -- credits -----------------------------------------------------------------------------


def test_calls_sharing_a_key_with_a_call_that_then_fails_are_refused_not_served_free(mesh, raw_channel, slow_jpeg):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    request = cutout_pb2.RemoveBackgroundRequest(image=slow_jpeg, options=SLOW, idempotency_key=f"k-{uuid.uuid4()}")
    first = stub.RemoveBackground.future(request, metadata=account.metadata, timeout=120)
    _wait_held(raw_channel, account, 1)
    others = [stub.RemoveBackground.future(request, metadata=account.metadata, timeout=120) for _ in range(4)]
    time.sleep(1.0)  # their reservations meet the first call's hold
    # The first call fails (cancelled): its hold is released. Should it have finished first
    # on a fast machine, its result was delivered and counts.
    cancelled = first.cancel()
    delivered = 0 if cancelled else int(bool(first.result().result.image))
    for call in others:
        try:
            answer = call.result()  # served by itself, or a free replay of a served first call
            delivered += bool(answer.result.image) and not answer.idempotent_replay
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED, error.details()
            assert _reason(error) == "IDEMPOTENCY_KEY_IN_USE"
            assert any(isinstance(d, error_details_pb2.RetryInfo) for d in error_details(error))
    _wait_held(raw_channel, account, 0)
    assert _charged(raw_channel, account) == delivered
    if cancelled:  # the key is free again after the failure: a retry is served and charged once
        assert stub.RemoveBackground(request, metadata=account.metadata, timeout=120).credits_charged == 1
        assert _charged(raw_channel, account) == delivered + 1
    else:  # the first call was served: a replay is made again and costs nothing
        assert stub.RemoveBackground(request, metadata=account.metadata, timeout=120).idempotent_replay
        assert _charged(raw_channel, account) == delivered


def test_replays_of_a_served_key_are_bounded_free_and_keep_no_second_copy(mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    photo = encode(astronaut.resize((256, 256)), "JPEG", quality=90)
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo, options=options_pb2.RemoveBackgroundOptions(keep_result=True), idempotency_key="paid-once"
    )
    first = stub.RemoveBackground(request, metadata=account.metadata, timeout=120)
    assert first.credits_charged == 1 and first.kept.result_id
    replays = 0
    for _ in range(10):  # a few free replays (issue 28), each naming the same kept result; then refused
        try:
            again = stub.RemoveBackground(request, metadata=account.metadata, timeout=120)
            assert again.idempotent_replay and again.kept.result_id == first.kept.result_id
            replays += 1
        except grpc.RpcError as caught:
            assert caught.code() == grpc.StatusCode.ALREADY_EXISTS
            assert _reason(caught) == "ALREADY_SERVED"
            assert "ListResults" in caught.details()
    assert replays == 3
    kept = stub.ListResults(cutout_pb2.ListResultsRequest(limit=100), metadata=account.metadata, timeout=30)
    assert [result.result_id for result in kept.results] == [first.kept.result_id]
    assert _charged(raw_channel, account) == 1
    kinds = Counter(e.kind for e in _ledger(raw_channel, account).entries)
    assert (kinds["reserve"], kinds["release"]) == (1, 0), "a replay writes no ledger entry"


def test_bodies_that_are_no_image_write_no_ledger_entry(mesh, raw_channel):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    bodies = [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\0" * 40, b"%PDF-1.4"]
    for index in range(30):
        body = bodies[index % len(bodies)]
        with pytest.raises(grpc.RpcError) as caught:
            stub.RemoveBackground(
                cutout_pb2.RemoveBackgroundRequest(image=body, idempotency_key=f"junk-{index}" if index % 2 else ""),
                metadata=account.metadata,
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert [e.kind for e in _ledger(raw_channel, account).entries] == ["grant", "grant"]


def test_a_stream_item_cancelled_as_its_answer_arrives_is_charged_if_received(mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=100)
    photos = [encode(astronaut.resize((900 + 8 * n, 900)), "PNG") for n in range(12)]
    received_total = 0
    for stop_after in (1, 6, 12):
        items = [
            cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=str(n), image=photo))
            for n, photo in enumerate(photos)
        ]
        call = cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
            iter(items), metadata=account.metadata, timeout=120
        )
        received = 0
        try:
            for answer in call:
                if answer.WhichOneof("kind") == "item" and answer.item.WhichOneof("outcome") == "response":
                    received += 1
                    if received == stop_after:
                        call.cancel()
                        break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.CANCELLED
        received_total += received
        _wait_held(raw_channel, account, 0)
        # An item committed just before the cancel is refunded by a task of its own, which
        # may land after the holds are back to zero: wait for the ledger to settle. What was
        # received is always charged; an item whose bytes went to gRPC before the cancel
        # arrived is charged too, although this client stopped reading (the server cannot
        # tell), so at most the stream's window more.
        deadline = time.monotonic() + 10
        while _charged(raw_channel, account) != received_total and time.monotonic() < deadline:
            time.sleep(0.1)
        assert received_total <= _charged(raw_channel, account) <= received_total + STREAM_ITEMS_IN_FLIGHT
        received_total = _charged(raw_channel, account)


@pytest.fixture
def gateway_through_proxy(mesh: Mesh, tmp_path) -> Iterator[tuple[ServiceProcess, FaultProxy]]:
    """A second gateway whose calls to accounts pass through a fault proxy."""
    proxy = FaultProxy(mesh.accounts.address).start()
    env = {**mesh.env, "CUTOUT_GATEWAY_ACCOUNTS_TIMEOUT_S": "1"}
    try:
        with another_gateway(mesh, tmp_path, env, accounts=proxy.address) as gateway:
            yield gateway, proxy
            proxy.heal()  # before the gateway stops
    finally:
        proxy.stop()


def test_accounts_stalled_after_the_reserve_serves_nothing_free(mesh, raw_channel, slow_jpeg, gateway_through_proxy):
    gateway, proxy = gateway_through_proxy
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    request = cutout_pb2.RemoveBackgroundRequest(image=slow_jpeg, options=SLOW, idempotency_key="stalled")
    with gateway.channel() as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)
        call = stub.RemoveBackground.future(request, metadata=account.metadata, timeout=60)
        _wait_held(raw_channel, account, 1)  # reserved (asked through the session's own gateway)
        proxy.blackhole()
        try:
            delivered = bool(call.result().result.image)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert _reason(error) == "DEPENDENCY_UNAVAILABLE"
            delivered = False
        proxy.heal()
        _wait_held(raw_channel, account, 0, within_s=30)  # the gateway's release lands once accounts answers
        assert _charged(raw_channel, account) == delivered
        # Retried with its key once accounts is back: served, and charged once in all.
        if not delivered:
            assert stub.RemoveBackground(request, metadata=account.metadata, timeout=60).credits_charged == 1
        assert _charged(raw_channel, account) == 1


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (options_pb2.RemoveBackgroundOptions(background_color="rgb(" + "9" * 40 + ",0,0)"), "options.background_color"),
        (options_pb2.RemoveBackgroundOptions(background_color="#" + "f" * 4000), "options.background_color"),
        (
            options_pb2.RemoveBackgroundOptions(background_color="hsl(" + "9" * 400 + ",50%,50%)"),
            "options.background_color",
        ),
        (
            options_pb2.RemoveBackgroundOptions(
                keep_result=True, keep_ttl=duration_pb2.Duration(seconds=315_576_000_000)
            ),
            "options.keep_ttl",
        ),
        (
            options_pb2.RemoveBackgroundOptions(keep_result=True, keep_ttl=duration_pb2.Duration(seconds=-5)),
            "options.keep_ttl",
        ),
    ],
)
def test_huge_numbers_in_options_are_invalid_arguments_and_cost_nothing(mesh, raw_channel, astronaut, options, field):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    photo = encode(astronaut.resize((64, 64)), "JPEG")
    with pytest.raises(grpc.RpcError) as caught:
        cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(image=photo, options=options), metadata=account.metadata, timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    violations = [d for d in error_details(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert violations and violations[0].field_violations[0].field == field
    assert "Error" not in caught.value.details() and "Traceback" not in caught.value.details()
    assert [e.kind for e in _ledger(raw_channel, account).entries] == ["grant"]


# -- input -------------------------------------------------------------------------------


def _remove(gateway: cutout_pb2_grpc.CutoutStub, image: bytes, **options: object) -> options_pb2.CutoutImage:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(**options))
    return gateway.RemoveBackground(request, timeout=120).result


def test_a_garbage_icc_profile_of_10_mib_is_not_copied_to_the_output(gateway, astronaut):
    garbage = np.random.default_rng(19).integers(0, 256, 10 * 2**20, dtype=np.uint8).tobytes()
    photo = encode(astronaut.resize((256, 256)), "JPEG", quality=90, icc_profile=garbage)
    assert len(photo) > 10 * 2**20
    for fmt in (options_pb2.OUTPUT_FORMAT_PNG, options_pb2.OUTPUT_FORMAT_WEBP, options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR):
        result = _remove(gateway, photo, format=fmt)
        assert len(result.image) < 2**20
        out = decode(result.image)
        assert "icc_profile" not in out.info and "exif" not in out.info


def _grey(astronaut: Image.Image) -> Image.Image:
    return astronaut.convert("L").resize((320, 320))


def test_a_16_bit_greyscale_png_is_cut_out_like_its_8_bit_twin(gateway, astronaut):
    grey = _grey(astronaut)
    wide = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # mode I;16
    sixteen = encode(wide, "PNG")
    assert decode(sixteen).mode in ("I;16", "I")
    eight = _remove(gateway, encode(grey, "PNG"))
    assert eight.foreground_fraction > 0.3
    assert _remove(gateway, sixteen).foreground_fraction == pytest.approx(eight.foreground_fraction, abs=0.03)


def _half_transparent(image: Image.Image) -> Image.Image:
    """`image` with an alpha channel whose left quarter is fully transparent."""
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, image.width // 4, image.height))
    out = image.copy()
    out.putalpha(alpha)
    return out


def _modes(astronaut: Image.Image) -> dict[str, tuple[bytes, bool]]:
    """Every mode Pillow decodes from JPEG, PNG and WebP: the file, and whether its left quarter is transparent."""
    rgb = astronaut.resize((320, 320))
    grey = rgb.convert("L")
    palette = rgb.quantize(255)
    palette_t = palette.copy()
    pixels = np.asarray(palette_t).copy()
    pixels[:, : rgb.width // 4] = 255  # index 255 unused by the quantizer: made transparent
    palette_t = Image.fromarray(pixels, "P")
    colours = palette.getpalette() or []
    palette_t.putpalette(colours + [0] * (768 - len(colours)))  # 256 entries, so that index 255 exists
    return {
        "jpeg-rgb": (encode(rgb, "JPEG", quality=90), False),
        "jpeg-l": (encode(grey, "JPEG", quality=90), False),
        "jpeg-cmyk": (encode(rgb.convert("CMYK"), "JPEG", quality=90), False),
        "png-1": (encode(grey.point(lambda v: 255 if v > 100 else 0).convert("1"), "PNG"), False),
        "png-l": (encode(grey, "PNG"), False),
        "png-i16": (encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"), False),
        "png-la": (encode(_half_transparent(grey), "PNG"), True),
        "png-p": (encode(palette, "PNG"), False),
        "png-p-transparency": (encode(palette_t, "PNG", transparency=255), True),
        "png-rgba": (encode(_half_transparent(rgb), "PNG"), True),
        "webp-rgb": (encode(rgb, "WEBP", quality=90), False),
        "webp-rgba": (encode(_half_transparent(rgb), "WEBP", lossless=True), True),
    }


MODES = [
    "jpeg-rgb",
    "jpeg-l",
    "jpeg-cmyk",
    "png-1",
    "png-l",
    "png-i16",
    "png-la",
    "png-p",
    "png-p-transparency",
    "png-rgba",
    "webp-rgb",
    "webp-rgba",
]


@pytest.fixture(scope="module")
def modes(astronaut: Image.Image) -> dict[str, tuple[bytes, bool]]:
    return _modes(astronaut)


@pytest.mark.parametrize("mode", MODES)
def test_every_decoded_mode_is_cut_out(gateway, modes, mode):
    data, transparent_quarter = modes[mode]
    result = _remove(gateway, data, subject=options_pb2.SUBJECT_PERSON)
    out = decode(result.image)
    assert (out.size, out.mode) == ((320, 320), "RGBA")
    alpha = np.asarray(out.getchannel("A"))
    if mode != "png-1":  # a two-colour picture keeps little of a person
        assert 0.2 < result.foreground_fraction < 0.9, result.foreground_fraction
    if transparent_quarter:  # what the input has transparent stays transparent
        assert alpha[:, : 320 // 4 - 2].max() == 0
    assert "icc_profile" not in out.info
