"""Pixels in memory: decoding, refinement, rendering (unit tests, no model server)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image, ImageCms

from cutout.v1 import options_pb2
from services.common import output_spec
from services.common.errors import ServiceError
from services.inference import imaging
from tests.conftest import decode, encode

LIMITS = imaging.DecodeLimits(max_bytes=50 * 2**20, max_pixels=25_000_000)


def test_exif_orientation_is_applied():
    # Stored 40 wide and 20 high, left half red; "rotate 90 CW to display" (orientation 6).
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = imaging.decode(encode(stored, "JPEG", exif=exif, quality=95), LIMITS)
    assert upright.size == (20, 40)
    red, blue = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert red[0] > 200 and red[2] < 60, "the stored left half is on top after the rotation"
    assert blue[2] > 200 and blue[0] < 60


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "JPEG"), ("L", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("RGBA", "WEBP"), ("1", "PNG")],
)
def test_any_mode_becomes_rgb(mode, fmt):
    image = Image.new("RGB", (16, 12), (200, 120, 40)).convert(mode)
    decoded = imaging.decode(encode(image, fmt), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (16, 12)


def test_embedded_colour_profiles_are_applied_and_broken_ones_ignored():
    # No RGB profile other than sRGB can be made offline, so this checks that the
    # conversion path runs and keeps sRGB pixels, and that a broken profile is harmless.
    pixel = (200, 120, 40)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = imaging.decode(encode(Image.new("RGB", (8, 8), pixel), "PNG", icc_profile=srgb), LIMITS)
    assert np.abs(np.subtract(tagged.getpixel((0, 0)), pixel)).max() <= 1
    broken = imaging.decode(encode(Image.new("RGB", (8, 8), pixel), "PNG", icc_profile=b"not a profile"), LIMITS)
    assert broken.getpixel((0, 0)) == pixel


def test_pixel_limit_is_checked_before_decoding():
    small_limits = imaging.DecodeLimits(max_bytes=2**20, max_pixels=100 * 100)
    with pytest.raises(ServiceError) as caught:
        imaging.decode(encode(Image.new("RGB", (101, 100)), "PNG"), small_limits)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "101x100" in caught.value.message
    assert imaging.decode(encode(Image.new("RGB", (100, 100)), "PNG"), small_limits).size == (100, 100)


def spec(**options) -> output_spec.OutputSpec:
    return output_spec.OutputSpec.from_proto(
        options_pb2.RemoveBackgroundOptions(**options), output_spec.EncoderDefaults()
    )


def test_transparent_png_zeroes_colour_under_full_transparency():
    image = Image.new("RGB", (10, 10), (90, 80, 70))
    alpha = Image.new("L", (10, 10), 0)
    alpha.paste(255, (0, 0, 5, 10))
    out = decode(imaging.render(image, alpha, spec()).data)
    assert out.getpixel((2, 2)) == (90, 80, 70, 255)
    assert out.getpixel((8, 2)) == (0, 0, 0, 0)


def test_defaults_and_validation_of_options():
    default = spec()
    assert default.format == options_pb2.OUTPUT_FORMAT_PNG and default.compression_effort == 1
    assert spec(background_color="rgb(1, 2, 3)", format=options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR).background == (1, 2, 3)
    with pytest.raises(ServiceError) as caught:
        spec(background_color="not a colour")
    assert caught.value.field == "options.background_color"


def test_no_subject_means_no_crop():
    image, alpha = Image.new("RGB", (30, 20)), Image.new("L", (30, 20), 0)
    rendered = imaging.render(image, alpha, spec(crop_to_subject=True, crop_margin_px=4))
    assert (rendered.width, rendered.height) == (30, 20)


def test_subject_box_is_widened_and_clipped():
    alpha = Image.new("L", (100, 50), 0)
    alpha.paste(255, (10, 5, 40, 45))
    assert imaging.subject_box(alpha, 8) == (2, 0, 48, 50)


def test_decoded_images_are_not_kept_open_on_their_buffer():
    # decode() loads the pixels, so the caller's bytes can be dropped at once.
    data = io.BytesIO(encode(Image.new("RGB", (8, 8)), "PNG")).getvalue()
    image = imaging.decode(data, LIMITS)
    del data
    assert image.getpixel((0, 0)) == (0, 0, 0)


def test_preview_size_is_at_most_a_quarter_megapixel_and_never_larger():
    assert imaging.preview_size((400, 300)) == (400, 300)
    width, height = imaging.preview_size((4000, 3000))
    assert width * height <= output_spec.PREVIEW_PIXELS and abs(width / height - 4 / 3) < 0.01


def test_roi_is_scaled_to_a_preview_and_refused_outside_the_picture():
    assert imaging.roi_box((100, 50, 200, 100), (1000, 500), (500, 250)) == (50, 25, 150, 75)
    with pytest.raises(ServiceError) as caught:
        imaging.roi_box((900, 0, 200, 100), (1000, 500), (1000, 500))
    assert caught.value.field == "options.roi"


def test_clean_edges_recovers_the_foreground_colour_of_a_soft_edge():
    """A red square with a soft edge on a green wall: the edge pixels come back red."""
    red, green = np.array([220, 20, 20], np.float32), np.array([0, 200, 40], np.float32)
    ramp = np.clip((np.arange(200) - 90) / 20, 0, 1).astype(np.float32)  # 0 at x<90, 1 at x>110
    a = np.tile(ramp, (120, 1))
    photo = Image.fromarray(np.uint8(a[..., None] * red + (1 - a[..., None]) * green + 0.5))
    alpha = Image.fromarray(np.uint8(a * 255 + 0.5))
    cleaned = np.asarray(imaging.estimate_foreground(photo, alpha), np.float32)
    soft = (a > 0.1) & (a < 0.9)
    before = np.linalg.norm(np.asarray(photo, np.float32)[soft] - red, axis=-1).mean()
    after = np.linalg.norm(cleaned[soft] - red, axis=-1).mean()
    assert after < before / 2, (before, after)  # measured: 142 -> 51
    assert np.array_equal(cleaned[a == 1], np.asarray(photo)[a == 1])
    assert np.array_equal(cleaned[a == 0], np.asarray(photo)[a == 0])


def test_place_leaves_a_picture_without_subject_alone():
    image, alpha = Image.new("RGB", (30, 20), (1, 2, 3)), Image.new("L", (30, 20), 0)
    placed, placed_alpha = imaging.place(image, alpha, spec(scale=50))
    assert placed is image and placed_alpha is alpha


def _chunks(png: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    types, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        types.append(png[at + 4 : at + 8])
        at += 12 + length
    return types


@pytest.mark.parametrize("fmt", [options_pb2.OUTPUT_FORMAT_PNG, options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR])
def test_fpng_writes_exactly_the_intended_pixels_at_effort_1(astronaut, fmt):
    """Effort 1's encoder (fpng) is lossless: the file decodes (with Pillow, libpng's reader)
    to the very pixels composited, every soft edge and zeroed background included."""
    picture = astronaut.resize((640, 480))
    ramp = np.clip((np.arange(640) - 200) * 2, 0, 255).astype(np.uint8)  # transparent, soft, opaque
    alpha = Image.fromarray(np.tile(ramp, (480, 1)), "L")
    if fmt == options_pb2.OUTPUT_FORMAT_PNG:
        intended = picture.copy()
        intended.putalpha(alpha)
        pixels = np.array(intended)
        pixels[np.asarray(alpha) == 0] = 0
    else:
        flat = Image.new("RGB", picture.size, (30, 144, 255))
        flat.paste(picture, mask=alpha)
        pixels = np.asarray(flat)
    rendered = imaging.render(picture.copy(), alpha, spec(format=fmt, background_color="#1e90ff"))
    assert b"fdEC" in _chunks(rendered.data), "effort 1 is fpng's file (its fdEC chunk)"
    decoded = Image.open(io.BytesIO(rendered.data))
    decoded.load()  # libpng's CRC and zlib checks pass
    assert np.array_equal(np.asarray(decoded), pixels)


def test_higher_compression_effort_is_smaller_and_still_lossless(astronaut):
    picture = astronaut.resize((640, 480))
    alpha = Image.new("L", picture.size, 0)
    alpha.paste(255, (160, 40, 480, 480))
    sizes = {}
    for effort in (1, 2, 9):
        rendered = imaging.render(picture.copy(), alpha, spec(compression_effort=effort))
        assert (b"fdEC" in _chunks(rendered.data)) == (effort == 1)
        decoded = np.asarray(Image.open(io.BytesIO(rendered.data)))
        assert np.array_equal(decoded[..., 3], np.asarray(alpha))
        sizes[effort] = len(rendered.data)
    assert sizes[1] > sizes[2] >= sizes[9], sizes  # zlib's run-length strategy gains little past level 2


def _photo(size: tuple[int, int], orientation: int = 1) -> bytes:
    """A JPEG of `size` (as stored) with a red left quarter, optionally with an EXIF orientation."""
    stored = Image.new("RGB", size, "blue")
    stored.paste((255, 0, 0), (0, 0, size[0] // 4, size[1]))
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif, quality=95)


class _Profile:
    def tensor(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((32, 32)), np.float32)


def test_a_jpeg_wanted_smaller_is_decoded_at_a_reduced_scale():
    header = imaging.open_image(_photo((4000, 3000)), LIMITS)
    reduced = imaging.decode_pixels(header, (500, 375))
    assert reduced.size == (500, 375), "libjpeg's 1/8 scale, exactly the wanted size"
    header = imaging.open_image(_photo((4000, 3000)), LIMITS)
    assert imaging.decode_pixels(header, (1200, 900)).size == (2000, 1500), "1/2: 1/4 would be too small"
    # Stored on its side (orientation 6): the wanted size is upright.
    header = imaging.open_image(_photo((4000, 3000), orientation=6), LIMITS)
    upright = imaging.decode_pixels(header, (375, 500))
    assert upright.size == (375, 500)
    red = upright.getpixel((187, 40))
    assert red[0] > 200 and red[2] < 60, "the stored left quarter is on top after the rotation"


@pytest.mark.parametrize(
    ("options", "made_at"),
    [
        ({"size": options_pb2.SIZE_PREVIEW}, imaging.preview_size((4000, 3000))),
        ({"max_width": 800}, (800, 600)),
        ({"max_width": 800, "crop_to_subject": True}, (4000, 3000)),  # the final size depends on the subject
        ({}, (4000, 3000)),
    ],
)
def test_the_output_is_made_at_its_final_size_when_that_is_known_to_be_smaller(options, made_at):
    """Decoding, the guided filter, compositing and encoding run at the output's size, not
    the photo's, when the output is scaled down anyway; the result has the same size."""
    wanted = spec(**options)
    prepared = imaging.prepare(imaging.open_image(_photo((4000, 3000)), LIMITS), wanted, _Profile())
    assert prepared.image.size == made_at and prepared.tensor.shape == (32, 32, 3)
    probability = np.zeros((32, 32), np.float32)
    probability[:, :16] = 1.0
    rendered, fraction = imaging.finish(prepared, probability, wanted)
    assert 0.3 < fraction < 0.7
    if not wanted.crop_to_subject:
        assert (rendered.width, rendered.height) == made_at
