"""Erasing marked regions: the fill (unit), its quality on held-out photos, and EraseRegions
through the real mesh (charging, idempotency, bad masks, mixed streams)."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2, error_details_pb2
from PIL import Image, ImageCms, ImageDraw

from bench.erase import marked, photo, score
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, erase_pb2
from services.common.errors import ServiceError, status_details
from services.inference.imaging import DecodeLimits, open_image
from services.inference.inpainting import (
    LARGE_PX,
    MAX_PATCH_REGIONS,
    THIN_PX,
    EraseMethod,
    boxes_mask,
    decode_picture,
    erase,
    find_regions,
    marks,
    patch_fill,
    read_mask,
)
from services.inference.inpainting import encode as inpainting_encode
from services.launcher import Mesh, ServiceProcess
from tests.conftest import another_gateway, decode, encode, new_account
from tests.mesh.test_bad_input import field_violations, reasons
from tests.mesh.test_credits import balance
from tests.mesh.test_stream import stream

LIMITS = DecodeLimits(50 * 2**20, 25_000_000)
METHODS = [
    EraseMethod.ERASE_METHOD_AUTO,
    EraseMethod.ERASE_METHOD_TELEA,
    EraseMethod.ERASE_METHOD_NAVIER_STOKES,
    EraseMethod.ERASE_METHOD_PATCH,
]


def png(array: np.ndarray) -> bytes:
    return encode(Image.fromarray(array), "PNG")


def mask_png(mask: np.ndarray) -> bytes:
    return png((mask * 255).astype(np.uint8))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode(data))


# ---- the fill, in process ----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS, ids=EraseMethod.Name)
def test_only_marked_pixels_change(astronaut, method):
    rgb = np.asarray(astronaut.resize((160, 160)))
    mask = np.zeros((160, 160), bool)
    mask[40:60, 30:90] = True  # a blob
    mask[100:104, 10:150] = True  # a thin line
    mask[150:160, 0:10] = True  # touching the corner
    out, regions = erase(rgb, mask, method)
    assert np.array_equal(out[~mask], rgb[~mask])
    assert not np.array_equal(out[mask], rgb[mask])
    assert sorted(r.pixels for r in regions) == sorted([20 * 60, 4 * 140, 10 * 10])


def test_auto_chooses_by_thickness(astronaut):
    rgb = np.asarray(astronaut.resize((256, 256)))
    mask = np.zeros((256, 256), bool)
    mask[20:24, 20:200] = True  # 4 px thick: thin
    mask[60:84, 60:84] = True  # 24 px: between THIN_PX and LARGE_PX
    mask[140:220, 120:220] = True  # 80 px: large
    assert THIN_PX < 24 <= LARGE_PX < 80
    _, regions = erase(rgb, mask)
    chosen = {r.box: r.method for r in regions}
    assert chosen == {
        (20, 20, 180, 4): EraseMethod.ERASE_METHOD_TELEA,
        (60, 60, 24, 24): EraseMethod.ERASE_METHOD_PATCH,
        (120, 140, 100, 80): EraseMethod.ERASE_METHOD_TELEA,
    }


def test_the_patch_fill_has_a_budget_per_picture():
    mask = np.zeros((400, 400), bool)
    for y in range(0, 400, 40):
        for x in range(0, 400, 40):
            mask[y : y + 20, x : x + 20] = True  # 100 blobs 20 px across, each one for the patch fill
    _, regions = find_regions(mask)
    methods = Counter(r.method for r in regions)
    assert methods == {EraseMethod.ERASE_METHOD_PATCH: MAX_PATCH_REGIONS, EraseMethod.ERASE_METHOD_TELEA: 76}
    one_big = np.zeros((800, 800), bool)
    one_big[100:700, 100:700] = True
    assert [r.method for r in find_regions(one_big, EraseMethod.ERASE_METHOD_PATCH)[1]] == [
        EraseMethod.ERASE_METHOD_PATCH  # bounded by MAX_PATCH_TARGETS instead
    ]


def test_the_patch_fill_copies_texture_where_smearing_cannot():
    # Stripes of period 6: a hole 20 px wide cannot be bridged by diffusion from its border,
    # but the exemplar fill finds the pattern next to it.
    stripes = np.zeros((96, 96, 3), np.uint8)
    stripes[:, (np.arange(96) % 6) < 3] = 200
    hole = np.zeros((96, 96), bool)
    hole[38:58, 38:58] = True
    filled = patch_fill(stripes, hole, np.random.default_rng(0))
    telea, _ = erase(stripes, hole, EraseMethod.ERASE_METHOD_TELEA)
    error_patch = np.abs(filled[hole].astype(int) - stripes[hole]).mean()
    error_telea = np.abs(telea[hole].astype(int) - stripes[hole]).mean()
    assert error_patch < 10 < error_telea, (error_patch, error_telea)


def test_the_fill_is_deterministic(astronaut):
    rgb = np.asarray(astronaut.resize((128, 128)))
    mask = np.zeros((128, 128), bool)
    mask[50:75, 50:75] = True
    first, _ = erase(rgb, mask, EraseMethod.ERASE_METHOD_PATCH)
    second, _ = erase(rgb, mask, EraseMethod.ERASE_METHOD_PATCH)
    assert np.array_equal(first, second)


def test_boxes_outside_or_empty_are_refused_with_their_index():
    inside = erase_pb2.Box(x=0, y=0, width=10, height=10)
    with pytest.raises(ServiceError) as caught:
        boxes_mask([inside, erase_pb2.Box(x=95, y=0, width=10, height=5)], (100, 50))
    assert caught.value.field == "regions.boxes[1]" and caught.value.reason == "BOX_OUTSIDE_IMAGE"
    with pytest.raises(ServiceError) as caught:
        boxes_mask([erase_pb2.Box(x=1, y=1, width=0, height=5)], (100, 50))
    assert caught.value.field == "regions.boxes[0]"
    assert boxes_mask([erase_pb2.Box(x=90, y=40, width=10, height=10)], (100, 50)).sum() == 100


def test_a_mask_with_transparency_erases_only_its_opaque_white():
    mask = Image.new("RGBA", (20, 10), (255, 255, 255, 0))  # transparent white: not marked
    ImageDraw.Draw(mask).rectangle((2, 2, 5, 5), fill=(255, 255, 255, 255))
    marked_pixels = read_mask(encode(mask, "PNG"), (20, 10), LIMITS)
    assert marked_pixels.sum() == 16 and marked_pixels[2:6, 2:6].all()


def test_the_picture_keeps_its_samples_and_colour_profile(astronaut):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # anything but sRGB
    data = encode(astronaut.resize((64, 48)), "PNG", icc_profile=profile)
    picture = decode_picture(open_image(data, LIMITS))
    assert np.array_equal(picture.rgb, np.asarray(astronaut.resize((64, 48))))  # no colour conversion
    out = decode(inpainting_encode(picture, picture.rgb, erase_pb2.ERASE_FORMAT_PNG, 90).data)
    assert out.info.get("icc_profile") == profile


def test_the_mask_is_of_the_upright_picture(astronaut):
    stored = astronaut.resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: upright it is 40x80
    picture = decode_picture(open_image(encode(stored, "JPEG", exif=exif), LIMITS))
    assert picture.size == (40, 80)
    upright = erase_pb2.EraseRegions(mask=mask_png(np.ones((80, 40), bool)))
    assert marks(upright, picture.size, LIMITS).all()
    with pytest.raises(ServiceError) as caught:
        marks(erase_pb2.EraseRegions(mask=mask_png(np.ones((40, 80), bool))), picture.size, LIMITS)
    assert caught.value.reason == "MASK_SIZE_MISMATCH" and "80x40 but the image is 40x80" in caught.value.message


# ---- quality on held-out photos (the truth is known) --------------------------------


@pytest.mark.parametrize("kind", ["watermark", "blob"])
def test_erasing_synthetic_marks_restores_a_held_out_photo(kind):
    clean = photo("coffee")  # never used to set the fill's rule
    image, mask = marked(clean, kind)
    filled, _ = erase(image, mask)
    before, after = score(clean, image, mask), score(clean, filled, mask)
    assert after.psnr > before.psnr + 10, (before, after)
    assert after.ssim > before.ssim + 0.05, (before, after)
    assert np.array_equal(filled[~mask], image[~mask])


# ---- the learned model slot: a Triton config for an inpainting model -----------------


@pytest.mark.parametrize(("config_file", "kind"), [("config.pbtxt", "KIND_CPU"), ("configs/gpu.pbtxt", "KIND_GPU")])
def test_the_inpainting_slot_configs_are_valid_triton_model_configs(config_file, kind):
    from tritonclient.grpc import model_config_pb2

    from services.inference.model import MODEL_REPOSITORY, TRITON_BACKENDS
    from services.inference.profiles import load_config

    config = load_config(MODEL_REPOSITORY.parent / "model_slots" / "inpainting" / config_file)  # refuses unknown fields
    # Triton's own ONNX Runtime backend on GPU clusters; its embedded stand-in on the CPU.
    assert config.backend == "onnxruntime" and (TRITON_BACKENDS / config.backend / "model.py").exists()
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("IMAGE", model_config_pb2.TYPE_UINT8, [-1, -1, 3]),
        ("MASK", model_config_pb2.TYPE_UINT8, [-1, -1, 1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("IMAGE_OUT", model_config_pb2.TYPE_UINT8, [-1, -1, 3])
    ]
    assert config.max_batch_size == 0  # pictures of any size: no batching across requests
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == kind
    assert not config.name, "the folder names the model, so a deployer can name it freely"


# ---- through the real mesh -----------------------------------------------------------


@pytest.fixture(scope="module")
def photo_png(astronaut) -> bytes:
    return encode(astronaut.resize((192, 160)), "PNG")


def erase_call(channel, account, request: erase_pb2.EraseRegionsRequest) -> erase_pb2.EraseRegionsResponse:
    return cutout_pb2_grpc.CutoutStub(channel).EraseRegions(request, metadata=account.metadata, timeout=120)


def test_erase_regions_through_the_mesh_fills_the_marks_and_charges_once(mesh: Mesh, raw_channel, photo_png):
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    original = pixels(photo_png)
    mask = np.zeros(original.shape[:2], bool)
    mask[20:24, 10:180] = True  # a thin line, by mask
    request = erase_pb2.EraseRegionsRequest(
        image=photo_png,
        regions=erase_pb2.EraseRegions(mask=mask_png(mask), boxes=[erase_pb2.Box(x=100, y=90, width=20, height=20)]),
        idempotency_key="erase-once",
    )
    answer = erase_call(raw_channel, account, request)
    marked_pixels = mask.copy()
    marked_pixels[90:110, 100:120] = True
    out = pixels(answer.result.image)
    assert answer.result.media_type == "image/png" and out.shape == original.shape
    assert np.array_equal(out[~marked_pixels], original[~marked_pixels])
    assert not np.array_equal(out[marked_pixels], original[marked_pixels])
    assert answer.result.foreground_fraction == pytest.approx(marked_pixels.mean())
    assert Counter(r.method for r in answer.regions) == {
        EraseMethod.ERASE_METHOD_TELEA: 1,
        EraseMethod.ERASE_METHOD_PATCH: 1,
    }
    assert answer.timings.postprocess_ms > 0 and answer.timings.total_ms >= answer.timings.postprocess_ms
    assert balance(raw_channel, account).available == 4
    again = erase_call(raw_channel, account, request)  # a retry with the same key: served already, replayed free
    assert again.idempotent_replay and again.result.image == answer.result.image
    assert balance(raw_channel, account).available == 4
    # The key with other regions, or for a removal, is another request: refused, not charged.
    other = erase_pb2.EraseRegionsRequest(image=photo_png, regions=request.regions, idempotency_key="erase-once")
    other.regions.boxes[0].x += 1
    removal = cutout_pb2.RemoveBackgroundRequest(image=photo_png, idempotency_key="erase-once")
    for call in (
        lambda: erase_call(raw_channel, account, other),
        lambda: cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackground(removal, metadata=account.metadata),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reasons(caught.value) == ["IDEMPOTENCY_KEY_REUSED"]
    assert balance(raw_channel, account).available == 4


def test_an_rgba_picture_keeps_its_alpha_and_every_unmarked_sample(mesh: Mesh, raw_channel, funded_account, astronaut):
    rgba = astronaut.resize((96, 96)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((96, 96)))
    for fmt, media_type in [(erase_pb2.ERASE_FORMAT_PNG, "image/png"), (erase_pb2.ERASE_FORMAT_WEBP, "image/webp")]:
        request = erase_pb2.EraseRegionsRequest(
            image=encode(rgba, "PNG"),
            regions=erase_pb2.EraseRegions(
                boxes=[erase_pb2.Box(x=30, y=30, width=12, height=12)], options=erase_pb2.EraseOptions(format=fmt)
            ),
        )
        answer = erase_call(raw_channel, funded_account, request)
        assert answer.result.media_type == media_type
        out, original = pixels(answer.result.image), np.asarray(rgba)
        keep = np.ones((96, 96), bool)
        keep[30:42, 30:42] = False
        assert out.shape == (96, 96, 4)
        assert np.array_equal(out[keep], original[keep])
        assert np.array_equal(out[..., 3], original[..., 3])


def bad_masks(photo_png: bytes) -> list[tuple[str, erase_pb2.EraseRegions, str, str]]:
    size = decode(photo_png).size
    small = np.ones((size[1] // 2, size[0] // 2), bool)
    return [
        ("wrong size", erase_pb2.EraseRegions(mask=mask_png(small)), "regions.mask", "96x80 but the image is 192x160"),
        (
            "empty mask",
            erase_pb2.EraseRegions(mask=mask_png(np.zeros((size[1], size[0]), bool))),
            "regions.mask",
            "marks no pixel",
        ),
        ("nothing marked", erase_pb2.EraseRegions(), "regions", "nothing to erase"),
        ("not an image", erase_pb2.EraseRegions(mask=b"this is not a PNG" * 10), "regions.mask", "mask is refused"),
        (
            "box outside",
            erase_pb2.EraseRegions(boxes=[erase_pb2.Box(x=180, y=10, width=20, height=20)]),
            "regions.boxes[0]",
            "reaches outside",
        ),
        (
            "quality",
            erase_pb2.EraseRegions(
                boxes=[erase_pb2.Box(x=1, y=1, width=2, height=2)], options=erase_pb2.EraseOptions(quality=101)
            ),
            "regions.options.quality",
            "out of range",
        ),
    ]


def test_bad_masks_are_invalid_argument_with_the_field_and_not_charged(mesh: Mesh, raw_channel, photo_png):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    for name, regions, field, words in bad_masks(photo_png):
        with pytest.raises(grpc.RpcError) as caught:
            erase_call(raw_channel, account, erase_pb2.EraseRegionsRequest(image=photo_png, regions=regions))
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert field_violations(error) == [field], name
        assert words in error.details(), (name, error.details())
        assert reasons(error), name
    assert balance(raw_channel, account).available == 3


def test_a_stream_mixes_removal_and_erase_items(mesh: Mesh, raw_channel, photo_png, astronaut_jpeg):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    box = erase_pb2.EraseRegions(boxes=[erase_pb2.Box(x=10, y=10, width=30, height=8)])
    bad = bad_masks(photo_png)[0][1]

    def item(**fields: object) -> cutout_pb2.StreamRequest:
        return cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(**fields))

    answers = stream(
        raw_channel,
        account.metadata,
        [
            item(id="remove-1", image=astronaut_jpeg),
            item(id="erase-1", image=photo_png, regions=box),
            item(id="remove-2", image=photo_png),
            item(id="erase-2", image=astronaut_jpeg, regions=box),
            item(id="erase-bad", image=photo_png, regions=bad),
        ],
    )
    *results, summary = answers
    outcomes = {a.item.id: a.item.WhichOneof("outcome") for a in results}
    assert outcomes == {
        "remove-1": "response",
        "erase-1": "erased",
        "remove-2": "response",
        "erase-2": "erased",
        "erase-bad": "error",
    }
    by_id = {a.item.id: a.item for a in results}
    erased = pixels(by_id["erase-1"].erased.result.image)
    original = pixels(photo_png)
    keep = np.ones(original.shape[:2], bool)
    keep[10:18, 10:40] = False
    assert np.array_equal(erased[keep], original[keep])
    assert decode(by_id["remove-1"].response.result.image).mode == "RGBA"  # a cut-out
    error = by_id["erase-bad"].error
    assert error.code == code_pb2.INVALID_ARGUMENT
    violations = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    assert violations[0].field_violations[0].field == "regions.mask"
    assert (summary.summary.items_ok, summary.summary.items_failed, summary.summary.credits_charged) == (4, 1, 4)
    assert balance(raw_channel, account).available == 6


@pytest.fixture(scope="module")
def pricey_gateway(mesh: Mesh, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A second gateway on the session's services whose erase costs 3 credits."""
    with another_gateway(
        mesh, tmp_path_factory.mktemp("pricey"), {**mesh.env, "CUTOUT_GATEWAY_PRICE_PER_ERASE": "3"}
    ) as gateway:
        yield gateway


def test_erase_has_its_own_price(mesh: Mesh, raw_channel, photo_png, pricey_gateway):
    account = new_account(raw_channel, mesh.admin_token, credits=4)
    request = erase_pb2.EraseRegionsRequest(
        image=photo_png, regions=erase_pb2.EraseRegions(boxes=[erase_pb2.Box(x=1, y=1, width=5, height=5)])
    )
    with pricey_gateway.channel() as channel:
        erase_call(channel, account, request)
        assert balance(channel, account).available == 1
        with pytest.raises(grpc.RpcError) as caught:  # 1 left, 3 needed
            erase_call(channel, account, request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert balance(channel, account).available == 1


def test_erase_needs_an_api_key(raw_channel, photo_png):
    with pytest.raises(grpc.RpcError) as caught:
        cutout_pb2_grpc.CutoutStub(raw_channel).EraseRegions(
            erase_pb2.EraseRegionsRequest(
                image=photo_png, regions=erase_pb2.EraseRegions(boxes=[erase_pb2.Box(x=1, y=1, width=5, height=5)])
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_png_round_trip_helper():
    # The helpers above must not themselves lose samples (else the equality tests prove nothing).
    array = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(pixels(png(array)), array)
    assert io.BytesIO(png(array)).getvalue()[:4] == b"\x89PNG"


def test_an_erase_of_isolated_dots_over_4_mp_is_refused_in_seconds_and_uncharged(mesh: Mesh, raw_channel, astronaut):
    """Issue 28: one credit once bought 25 s of CPU and 444,889 regions (a dot every 3 px)."""
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    photo = encode(astronaut.resize((2000, 2000)), "JPEG", quality=85)
    dots = np.zeros((2000, 2000), bool)
    dots[::3, ::3] = True
    request = erase_pb2.EraseRegionsRequest(image=photo, regions=erase_pb2.EraseRegions(mask=mask_png(dots)))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        erase_call(raw_channel, account, request)
    took = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "separate regions" in caught.value.details() and took < 10, took
    # A mask that covers nearly all of a 4 MP picture: past the marked pixels one erase fills.
    everything = np.ones((2100, 2100), bool)
    everything[0, 0] = False
    photo = encode(astronaut.resize((2100, 2100)), "JPEG", quality=85)
    with pytest.raises(grpc.RpcError) as caught:
        erase_call(
            raw_channel,
            account,
            erase_pb2.EraseRegionsRequest(image=photo, regions=erase_pb2.EraseRegions(mask=mask_png(everything))),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixels" in caught.value.details()
    assert balance(raw_channel, account).available == 3
    # A thousand separate marks are still one erase.
    marks = np.zeros((2000, 2000), bool)
    for n in range(1000):
        y, x = divmod(n, 40)
        marks[20 + y * 50 : 24 + y * 50, 20 + x * 48 : 26 + x * 48] = True
    photo = encode(astronaut.resize((2000, 2000)), "JPEG", quality=85)
    answer = erase_call(
        raw_channel,
        account,
        erase_pb2.EraseRegionsRequest(image=photo, regions=erase_pb2.EraseRegions(mask=mask_png(marks))),
    )
    assert len(answer.regions) == 1000 and balance(raw_channel, account).available == 2
