"""The options of issue #16 through the real mesh (gateway -> inference -> Triton), checking pixels:
formats AUTO and the colour + alpha pair, background image and blur, scale, position, roi,
crop margin in percent, drop shadow, clean edges, sizes and their prices, and what the
response reports (foreground box, credits charged, replays), on the unary call and on streams."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from PIL import Image, ImageFilter

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.launcher import Mesh
from tests.conftest import another_gateway, decode, encode, new_account

Opts = options_pb2.RemoveBackgroundOptions
WALL = (0, 200, 40)  # a strongly coloured (green) wall


def remove(stub, image: bytes, metadata=(), key: str = "", **options: object) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=Opts(**options), idempotency_key=key)
    return stub.RemoveBackground(request, metadata=list(metadata), timeout=120)


def pixels(data: bytes, mode: str | None = None) -> np.ndarray:
    image = decode(data)
    return np.asarray(image.convert(mode) if mode else image, np.int16)


@pytest.fixture(scope="module")
def alpha(gateway, astronaut_png) -> np.ndarray:
    """The matte of the astronaut photo (the mesh is deterministic for the same input)."""
    return pixels(remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_MASK).result.image)


def box_of(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """left, top, right, bottom of the pixels at least half opaque."""
    rows, cols = np.nonzero(alpha >= 128)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def reported_box(result: options_pb2.CutoutImage) -> tuple[int, int, int, int]:
    box = result.foreground_box
    return box.left, box.top, box.left + box.width, box.top + box.height


# Formats ------------------------------------------------------------------------------


def test_auto_is_png_when_transparent_and_jpeg_when_opaque(gateway, astronaut_png):
    transparent = remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_AUTO).result
    assert transparent.media_type == "image/png" and decode(transparent.image).mode == "RGBA"
    opaque = remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_AUTO, background_color="#1e90ff").result
    assert opaque.media_type == "image/jpeg" and decode(opaque.image).mode == "RGB"


def test_the_colour_alpha_pair_recomposites_to_the_rgba_png(gateway, astronaut_png):
    rgba = pixels(remove(gateway, astronaut_png).result.image).astype(np.float32)
    pair = remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_COLOR_ALPHA_PAIR, quality=90).result
    assert pair.media_type == "image/jpeg"
    colour = pixels(pair.image).astype(np.float32)
    alpha = pixels(pair.alpha_image)
    assert decode(pair.alpha_image).mode == "L" and alpha.shape == colour.shape[:2] == (512, 512)
    assert np.array_equal(alpha, rgba[..., 3]), "the alpha is sent losslessly"
    # Both composited over white: JPEG's loss only.
    a = alpha[..., None] / 255
    ours = colour * a + 255 * (1 - a)
    reference = rgba[..., :3] * a + 255 * (1 - a)
    difference = np.abs(ours - reference)
    assert difference.mean() < 2.0 and np.percentile(difference, 99) < 16, difference.mean()
    assert len(pair.image) + len(pair.alpha_image) < len(remove(gateway, astronaut_png).result.image)


# Backgrounds --------------------------------------------------------------------------


def test_background_image_shows_exactly_where_alpha_is_zero(gateway, astronaut_png, astronaut, alpha):
    noise = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    backdrop = encode(Image.fromarray(noise), "PNG")
    result = remove(
        gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, background_image=backdrop
    ).result
    out = pixels(result.image)
    assert np.array_equal(out[alpha == 0], noise[alpha == 0])
    assert np.array_equal(out[alpha == 255], np.asarray(astronaut)[alpha == 255])
    assert (alpha == 0).sum() > 50_000 and (alpha == 255).sum() > 50_000


def test_background_image_cover_and_fit(gateway, astronaut_png, alpha):
    wide = Image.new("RGB", (400, 100), (200, 30, 30))  # red, 4:1
    backdrop = encode(wide, "PNG")
    common = {"format": options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, "background_image": backdrop}
    cover = pixels(remove(gateway, astronaut_png, **common).result.image)
    assert np.abs(cover[alpha == 0] - (200, 30, 30)).max() <= 1, "cover: red everywhere behind"
    fit = pixels(
        remove(
            gateway,
            astronaut_png,
            background_fit=options_pb2.BACKGROUND_FIT_FIT,
            background_color="#0000ff",
            **common,
        ).result.image
    )
    # Fitted: 512x128 of red across the middle, blue bands above and below.
    band, middle = (slice(0, 150), slice(None)), (slice(200, 300), slice(None))
    clear = alpha == 0
    assert np.abs(fit[band][clear[band]] - (0, 0, 255)).max() <= 1
    assert np.abs(fit[middle][clear[middle]] - (200, 30, 30)).max() <= 1


def test_blurred_original_background(gateway, astronaut_png, astronaut, alpha):
    out = pixels(
        remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, blur_background=True).result.image
    )
    photo = np.asarray(astronaut, np.int16)
    blurred = np.asarray(astronaut.filter(ImageFilter.GaussianBlur(512 / 100)), np.int16)
    clear = alpha == 0
    assert np.abs(out[clear] - blurred[clear]).max() <= 1, "the photo itself, blurred, behind the subject"
    assert np.abs(out[clear] - photo[clear]).mean() > 5, "and not the sharp photo"
    assert np.array_equal(out[alpha == 255], photo[alpha == 255])


# Placement ----------------------------------------------------------------------------


# The placement tests measure boxes to a few pixels, so they cut out at the fine level: the fast
# level's mask of this photo keeps a faint, half-opaque ghost of the flag up to the frame's edge,
# whose box is blurred by any resampling.
FINE = options_pb2.DETAIL_FINE


def test_scale_half_centres_a_subject_box_of_half_the_canvas(gateway, astronaut_png):
    result = remove(gateway, astronaut_png, scale=50, detail=FINE).result
    out_alpha = pixels(result.image)[..., 3]
    left, top, right, bottom = box_of(out_alpha)
    width, height = right - left, bottom - top
    original = box_of(
        pixels(remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_MASK, detail=FINE).result.image)
    )
    aspect = (original[2] - original[0]) / (original[3] - original[1])
    # The limiting side is half the canvas, the aspect kept.
    assert max(width, height) == pytest.approx(256, abs=3)
    assert width / height == pytest.approx(aspect, rel=0.03)
    assert (left + right) / 2 == pytest.approx(256, abs=2) and (top + bottom) / 2 == pytest.approx(256, abs=2)
    assert reported_box(result) == (left, top, right, bottom)


def test_position_percent_and_original(gateway, astronaut_png, alpha):
    corner = remove(
        gateway,
        astronaut_png,
        scale=40,
        position=options_pb2.POSITION_PERCENT,
        position_x_percent=100,
        position_y_percent=0,
        detail=FINE,
    ).result
    left, top, right, bottom = box_of(pixels(corner.image)[..., 3])
    assert right == pytest.approx(512, abs=2) and top == pytest.approx(0, abs=2), "flush top right"
    assert reported_box(corner) == (left, top, right, bottom)
    kept = remove(gateway, astronaut_png, position=options_pb2.POSITION_ORIGINAL).result
    assert np.array_equal(pixels(kept.image)[..., 3], alpha), "no scale, original position: unchanged"


def test_roi_only_looks_inside_the_rectangle(gateway, astronaut_png, alpha):
    roi = options_pb2.Rect(left=0, top=0, width=300, height=512)
    out_alpha = pixels(remove(gateway, astronaut_png, roi=roi).result.image)[..., 3]
    assert out_alpha[:, 300:].max() == 0, "nothing outside the roi is foreground"
    assert alpha[:, 300:].max() == 255, "(without the roi there is)"
    assert out_alpha[100:170, 180:260].mean() > 240, "the face, inside it, is kept"


def test_crop_margin_in_percent_of_the_subject(gateway, astronaut_png, alpha):
    left, top, right, bottom = box_of(alpha)
    result = remove(gateway, astronaut_png, crop_to_subject=True, crop_margin_percent=10).result
    mx, my = round((right - left) * 0.1), round((bottom - top) * 0.1)
    expected = (min(512, right + mx) - max(0, left - mx), min(512, bottom + my) - max(0, top - my))
    assert (result.width, result.height) == expected == decode(result.image).size


# Shadow -------------------------------------------------------------------------------


def test_shadow_darkens_just_below_the_subject_and_nowhere_above(gateway, astronaut_png):
    common = {"format": options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, "scale": 50}
    plain = remove(gateway, astronaut_png, **common).result
    shadowed = remove(gateway, astronaut_png, add_shadow=True, **common).result
    flat, dark = pixels(plain.image), pixels(shadowed.image)
    left, top, right, bottom = reported_box(shadowed)
    assert reported_box(plain) == (left, top, right, bottom), "the box is the subject's, not its shadow's"
    assert np.array_equal(dark[:top], flat[:top]), "nothing above the subject changes"
    below = (slice(bottom, bottom + 6), slice(left + 10, right - 10))
    assert (flat[below] - dark[below]).mean() > 20, "just below it is darker"
    assert (dark <= flat).all(), "a shadow only darkens"


# Clean edges and the colour under alpha 0 ----------------------------------------------


@pytest.fixture(scope="module")
def on_the_wall(astronaut, alpha) -> bytes:
    """The astronaut in front of a green wall (composited with the mesh's own matte)."""
    a = alpha[..., None] / 255
    photo = np.asarray(astronaut, np.float32)
    return encode(Image.fromarray(np.uint8(photo * a + np.float32(WALL) * (1 - a) + 0.5)), "PNG")


def test_no_output_keeps_the_wall_under_alpha_zero(gateway, on_the_wall):
    photo = on_the_wall
    for fmt in (options_pb2.OUTPUT_FORMAT_PNG, options_pb2.OUTPUT_FORMAT_WEBP):
        for clean in (False, True):
            out = pixels(remove(gateway, photo, format=fmt, clean_edges=clean).result.image, "RGBA")
            clear = out[..., 3] == 0
            assert clear.sum() > 50_000
            # PNG: exactly black; lossy WebP: black but for chroma bleeding next to the edges
            # (measured: at least 134 from the wall, black being 204 from it).
            far = np.linalg.norm(out[..., :3][clear] - WALL, axis=-1).min()
            assert far > 100 if fmt == options_pb2.OUTPUT_FORMAT_WEBP else (out[..., :3][clear] == 0).all(), far
    pair = remove(gateway, photo, format=options_pb2.OUTPUT_FORMAT_COLOR_ALPHA_PAIR).result
    colour, pair_alpha = pixels(pair.image), pixels(pair.alpha_image)
    # Black under alpha 0, give or take JPEG's ringing next to the edges.
    assert np.percentile(colour[pair_alpha == 0], 99) < 16


def test_clean_edges_removes_the_wall_colour_from_soft_edges(gateway, on_the_wall):
    """The spill metric: over the edge pixels (0.1 < alpha < 0.9), the mean Euclidean RGB
    distance of the output colour from the wall colour; higher means less of the wall in
    them (measured: 110 without clean_edges, 182 with it; black is 204 from the wall)."""
    photo = on_the_wall
    before = pixels(remove(gateway, photo).result.image).astype(np.float32)
    after = pixels(remove(gateway, photo, clean_edges=True).result.image).astype(np.float32)
    assert np.array_equal(before[..., 3], after[..., 3]), "the matte is the same"
    a = before[..., 3] / 255
    edge = (a > 0.1) & (a < 0.9)
    assert edge.sum() > 5000
    from_wall = [np.linalg.norm(x[..., :3][edge] - WALL, axis=-1).mean() for x in (before, after)]
    print(f"edge pixels {edge.sum()}: mean distance from the wall {from_wall[0]:.1f} -> {from_wall[1]:.1f}")
    assert from_wall[1] > from_wall[0] * 1.4, from_wall
    opaque = a == 1
    assert np.array_equal(before[opaque], after[opaque]), "opaque pixels keep the photo's colours"


# Sizes, prices and what the response reports ------------------------------------------


@pytest.fixture(scope="module")
def priced(mesh: Mesh, tmp_path_factory) -> Iterator[grpc.Channel]:
    """A second gateway charging 4 credits for FULL and 1 for PREVIEW, on the session's services."""
    prices = {**mesh.env, "CUTOUT_GATEWAY_PRICE_FULL": "4", "CUTOUT_GATEWAY_PRICE_PREVIEW": "1"}
    with another_gateway(mesh, tmp_path_factory.mktemp("priced"), prices) as gateway, gateway.channel() as channel:
        yield channel


def _ledger(channel: grpc.Channel, metadata) -> account_pb2.ListLedgerResponse:
    return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(limit=100), metadata=metadata, timeout=30
    )


def test_preview_costs_its_price_and_the_ledger_shows_it(mesh, priced, astronaut):
    account = new_account(priced, mesh.admin_token, credits=10)
    stub = cutout_pb2_grpc.CutoutStub(priced)
    photo = encode(astronaut.resize((1024, 768)), "JPEG", quality=90)
    preview = remove(stub, photo, account.metadata, size=options_pb2.SIZE_PREVIEW)
    result = preview.result
    assert result.width * result.height <= 250_000 and result.width / result.height == pytest.approx(4 / 3, rel=0.01)
    assert decode(result.image).size == (result.width, result.height)
    assert (result.size, preview.credits_charged, preview.idempotent_replay) == (options_pb2.SIZE_PREVIEW, 1, False)
    full = remove(stub, photo, account.metadata)
    assert (full.result.width, full.result.size, full.credits_charged) == (1024, options_pb2.SIZE_FULL, 4)
    history = _ledger(priced, account.metadata)
    commits = sorted(-e.held for e in history.entries if e.kind == "commit")
    assert commits == [1, 4] and history.balance.available == 10 - 1 - 4


def test_auto_size_takes_what_the_balance_covers_and_a_replay_gets_the_size_paid_for(mesh, priced, astronaut):
    account = new_account(priced, mesh.admin_token, credits=5)
    stub = cutout_pb2_grpc.CutoutStub(priced)
    photo = encode(astronaut.resize((1024, 1024)), "JPEG", quality=90)
    first = remove(stub, photo, account.metadata, key="auto-1", size=options_pb2.SIZE_AUTO)
    assert (first.result.size, first.result.width, first.credits_charged) == (options_pb2.SIZE_FULL, 1024, 4)
    second = remove(stub, photo, account.metadata, key="auto-2", size=options_pb2.SIZE_AUTO)  # 1 credit left
    assert (second.result.size, second.credits_charged) == (options_pb2.SIZE_PREVIEW, 1)
    assert second.result.width * second.result.height <= 250_000
    # Retried with the same keys: already served, so replayed at the size paid for, charged nothing.
    for key, served in (("auto-1", first), ("auto-2", second)):
        again = remove(stub, photo, account.metadata, key=key, size=options_pb2.SIZE_AUTO)
        assert again.idempotent_replay and again.credits_charged == 0
        assert (again.result.size, again.result.image) == (served.result.size, served.result.image)
    with pytest.raises(grpc.RpcError) as caught:
        remove(stub, photo, account.metadata, key="auto-3", size=options_pb2.SIZE_AUTO)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _ledger(priced, account.metadata).balance.available == 0


def test_the_response_reports_box_charge_and_replay_on_streams_too(mesh, raw_channel, astronaut_png, alpha):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    items = [
        cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=name, image=astronaut_png, idempotency_key="same"))
        for name in ("a", "b")
    ]
    # One after the other, so that the second is a replay of a committed first.
    answers = []
    for item in items:
        answers += list(
            cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
                iter([item]), metadata=account.metadata, timeout=120
            )
        )
    first, second = (a.item for a in answers if a.WhichOneof("kind") == "item")
    assert reported_box(first.response.result) == box_of(alpha)
    assert (first.response.credits_charged, first.response.idempotent_replay) == (1, False)
    # A replay of a served key is made again and handed over free (issue 28).
    assert (second.response.credits_charged, second.response.idempotent_replay) == (0, True)
    assert reported_box(second.response.result) == box_of(alpha)
    summaries = [a.summary.credits_charged for a in answers if a.WhichOneof("kind") == "summary"]
    assert summaries == [1, 0]


# Errors -------------------------------------------------------------------------------

INVALID = [
    ({"background_image": b"not read"}, "options.background_image"),
    ({"blur_background": True, "format": options_pb2.OUTPUT_FORMAT_PNG}, "options.blur_background"),
    (
        {"blur_background": True, "background_image": b"x", "format": options_pb2.OUTPUT_FORMAT_AUTO},
        "options.blur_background",
    ),
    ({"background_fit": options_pb2.BACKGROUND_FIT_FIT}, "options.background_fit"),
    ({"scale": 5}, "options.scale"),
    ({"scale": 101}, "options.scale"),
    ({"position": 9}, "options.position"),
    ({"position_x_percent": 20}, "options.position_x_percent"),
    ({"position": options_pb2.POSITION_PERCENT, "position_y_percent": 101}, "options.position_y_percent"),
    ({"scale": 50, "crop_to_subject": True}, "options.crop_to_subject"),
    (
        {"scale": 50, "blur_background": True, "format": options_pb2.OUTPUT_FORMAT_AUTO},
        "options.blur_background",
    ),
    ({"crop_margin_percent": 10}, "options.crop_margin_percent"),
    ({"crop_to_subject": True, "crop_margin_percent": 51}, "options.crop_margin_percent"),
    ({"crop_to_subject": True, "crop_margin_percent": 5, "crop_margin_px": 5}, "options.crop_margin_percent"),
    ({"add_shadow": True, "format": options_pb2.OUTPUT_FORMAT_MASK}, "options.add_shadow"),
    ({"clean_edges": True, "format": options_pb2.OUTPUT_FORMAT_MASK}, "options.clean_edges"),
    ({"roi": options_pb2.Rect(left=10, top=10)}, "options.roi"),
    ({"roi": options_pb2.Rect(left=500, top=0, width=20, height=20)}, "options.roi"),
    ({"size": 7}, "options.size"),
    (
        {"format": options_pb2.OUTPUT_FORMAT_AUTO, "background_image": b"not an image"},
        "options.background_image",
    ),
]


def test_every_invalid_combination_is_refused_with_its_field_and_uncharged(mesh, raw_channel, astronaut_png):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    stub = cutout_pb2_grpc.CutoutStub(raw_channel)
    for options, field in INVALID:
        with pytest.raises(grpc.RpcError) as caught:
            remove(stub, astronaut_png, account.metadata, **options)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (options, error.details())
        fields = [
            v.field
            for d in error_details(error)
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        assert fields == [field], (options, error.details())
    balance = stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=30)
    assert (balance.available, balance.held) == (3, 0)
