"""Everything the inference service does to pixels, in memory: decode, model input,
mask refinement, compositing and encoding. Pure functions, no I/O, no gRPC."""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import cv2
import fpng
import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageFilter, ImageOps, UnidentifiedImageError
from scipy.ndimage import uniform_filter

from cutout.v1 import options_pb2
from services.common.errors import ServiceError, invalid_argument
from services.common.output_spec import (
    ACCEPTED_FORMATS,
    CORRUPT_DATA,
    OPAQUE_FORMATS,
    PREVIEW_PIXELS,
    OutputFormat,
    OutputSpec,
    Position,
    Size,
)
from services.inference import matting

_SRGB = ImageCms.createProfile("sRGB")
# One thread per OpenCV call: the service's own pools spread requests (and a lone picture's
# refinement) over the cores; OpenCV's threads on top only contended with them (a 12 MP
# refinement took 214 ms of CPU with them, 165 ms without).
cv2.setNumThreads(1)
# decode() checks DecodeLimits.max_pixels itself right after reading the header, and
# says the size it saw; Pillow's own global bomb check would refuse without saying it.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int


# zlib's run-length strategy: on 1 MP cut-outs and photos it was both faster and
# smaller than the default strategy at every level (57 ms vs 68 ms at level 1,
# 66 ms vs 311 ms at level 6; docs/decisions/png-zlib-rle.md).
_Z_RLE = 3


def _webp_method(effort: int) -> int:
    """Effort 1-9 onto WebP's methods 0-6 (method 0 took 75 ms on 1 MP, method 4 180 ms)."""
    return min(6, (effort - 1) * 6 // 8)


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str
    width: int
    height: int
    # The subject's box (pixels at least half opaque) in output pixels: left, top, right, bottom.
    foreground_box: tuple[int, int, int, int] | None = None
    alpha_data: bytes = b""  # OUTPUT_FORMAT_COLOR_ALPHA_PAIR: the alpha as a greyscale PNG


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Reads only the header, so size limits are enforced before any pixel is decoded."""
    if not data:
        raise invalid_argument("image is empty; send the bytes of a JPEG, PNG or WebP file", field="image")
    if len(data) > limits.max_bytes:
        raise invalid_argument(
            f"image is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB. "
            "Send a smaller file.",
            field="image",
            reason="IMAGE_TOO_LARGE",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise invalid_argument(
            "image is not a JPEG, PNG or WebP file (its first bytes match none of them)", field="image"
        ) from None
    except CORRUPT_DATA as exc:
        raise invalid_argument(f"image header could not be read: {exc}", field="image") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)
    return image


def decode_pixels(image: Image.Image, wanted: tuple[int, int] | None = None) -> Image.Image:
    """An opened image to upright sRGB RGB pixels, refusing corrupt or truncated data.
    (`wanted`: as for decode_with_alpha.)"""
    return decode_with_alpha(image, wanted)[0]


def decode_with_alpha(
    image: Image.Image, wanted: tuple[int, int] | None = None
) -> tuple[Image.Image, Image.Image | None]:
    """As decode_pixels, and the input's own alpha (None if it is opaque): transparent
    areas are shown on white, as a viewer shows them, and stay transparent in the cut-out.

    With `wanted` (the upright size the pixels will be scaled down to), a JPEG is decoded
    at the smallest of libjpeg's DCT scales (1/2, 1/4, 1/8) that is still at least that
    size: a 12 MP photo wanted at a quarter megapixel is decoded at 1/4 the cost.
    """
    try:
        if wanted is not None:
            _draft(image, wanted)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_srgb(image)
    except CORRUPT_DATA as exc:
        raise _corrupt(exc) from None


def _corrupt(exc: BaseException) -> ServiceError:
    return invalid_argument(f"image data is corrupt or truncated ({exc}); send the complete file", field="image")


def upright_size(image: Image.Image) -> tuple[int, int]:
    """An opened image's size once its EXIF orientation is applied. Reading the EXIF may decode
    the whole file (a PNG's eXIf chunk may follow its pixels), so corrupt data is refused here too
    (fuzz/decode.py found a truncated PNG raising OSError here, outside any mapping)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except CORRUPT_DATA as exc:
        raise _corrupt(exc) from None
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size


def _draft(image: Image.Image, wanted: tuple[int, int]) -> None:
    """Asks the decoder (JPEG only; others ignore it) for a reduced size no smaller than `wanted`."""
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # stored on its side
        wanted = (wanted[1], wanted[0])
    factor = min(width / wanted[0], height / wanted[1])
    if factor >= 2:
        image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))


def decode(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Bytes to an upright sRGB RGB image, refusing what is empty, corrupt or too big."""
    return decode_pixels(open_image(data, limits))


def _too_many_pixels(size: tuple[int, int], limits: DecodeLimits) -> ServiceError:
    width, height = size
    return invalid_argument(
        f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
        f"the limit is {limits.max_pixels / 1e6:.0f} megapixels. Scale it down and send it again.",
        field="image",
        reason="IMAGE_TOO_LARGE",
    )


def _to_srgb(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any mode Pillow decodes from the accepted formats to 8-bit sRGB RGB, and its alpha.

    Nothing of the input's metadata (profile, EXIF, text) stays on the pixels: outputs
    carry only what the caller asked for. A profile over MAX_PROFILE_BYTES is not read.
    """
    icc = image.info.get("icc_profile")
    if icc and len(icc) > MAX_PROFILE_BYTES:
        icc = None
    if image.mode in SIXTEEN_BIT_GREY:
        image = _grey_to_eight_bits(image)
    elif image.mode in ("P", "PA", "1", "La"):
        image = image.convert("RGBA" if image.mode != "1" and _has_alpha(image) else "RGB")
    elif image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            mode = "RGBA" if image.mode in ("RGBA", "LA") else "RGB"
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile: take the pixels as sRGB
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    if alpha is not None and alpha.getextrema() == (255, 255):
        alpha = None
    if alpha is None:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    else:  # on white, so that colour hidden under transparent pixels is never looked at
        rgb = Image.new("RGB", image.size, (255, 255, 255))
        rgb.paste(image.convert("RGB"), mask=alpha)
    rgb.info = {}
    return rgb, alpha


# Pillow's modes for 16-bit greyscale PNGs ("I" holds 0..65535 in 32 bits).
SIXTEEN_BIT_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Larger embedded colour profiles are not parsed (real ones are kilobytes; printer
# profiles reach a few hundred).
MAX_PROFILE_BYTES = 1 << 20


def _grey_to_eight_bits(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit "L" by its full range (Pillow's convert clips at 255: all white)."""
    values = np.asarray(image, dtype=np.uint32)
    return Image.fromarray(((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


class Stages:
    """Where one request's time went inside a worker call: (stage, start, end), epoch ns,
    for the caller to turn into timings and spans once back on its own thread."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            self.marks.append((name, start, time.time_ns()))


class Profile(Protocol):
    """What prepare() needs of a model's profile (services/inference/profiles.py)."""

    def tensor(self, image: Image.Image) -> np.ndarray: ...


@dataclass(frozen=True)
class Prepared:
    """A picture ready for its model, and what its output is made from."""

    image: Image.Image  # upright sRGB, at the size the output is made at (working_size)
    looked_at: Image.Image  # what the model sees: `image`, or its roi
    roi: tuple[int, int, int, int] | None  # the roi as a box on `image`
    tensor: np.ndarray  # the model's input
    backdrop: Image.Image | None = None  # the decoded background_image
    input_alpha: Image.Image | None = None  # the input's own alpha, at `image`'s size (None: opaque)


def working_size(size: tuple[int, int], spec: OutputSpec) -> tuple[int, int]:
    """The size the output is made at: the picture's, or the smaller size the output will
    have anyway (a preview, or max_width / max_height without a crop or placement, whose
    final size depends on the subject), so the alpha, compositing and encoding
    never work on pixels that would only be thrown away."""
    if spec.size == Size.SIZE_PREVIEW:
        size = preview_size(size)
    if spec.crop_to_subject or spec.placed:
        return size
    return _fit(size, spec.max_width, spec.max_height)


def prepare(
    header: Image.Image,
    spec: OutputSpec,
    profile: Profile,
    backdrop: Image.Image | None = None,
    stages: Stages | None = None,
) -> Prepared:
    """An opened picture (open_image) decoded, scaled to its working size and made the model's input:
    all of one request's work before the model, in one call (one trip to a worker thread)."""
    stages = stages or Stages()
    with stages("decode"):
        upright = upright_size(header)
        wanted = working_size(upright, spec)
        image, input_alpha = decode_with_alpha(header, wanted if wanted != upright else None)
        decoded_backdrop = decode_pixels(backdrop) if backdrop is not None else None
    with stages("preprocess"):
        if image.size != wanted:
            image = image.resize(wanted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if input_alpha is not None and input_alpha.size != image.size:
            input_alpha = input_alpha.resize(image.size, Image.Resampling.BILINEAR)
        roi = roi_box(spec.roi, upright, image.size) if spec.roi else None
        looked_at = image.crop(roi) if roi else image
        tensor = profile.tensor(looked_at)
    return Prepared(image, looked_at, roi, tensor, decoded_backdrop, input_alpha)


def finish(
    prepared: Prepared,
    probability: np.ndarray,
    spec: OutputSpec,
    matte: Callable[[Image.Image, np.ndarray], np.ndarray] | None = None,
    stages: Stages | None = None,
) -> tuple[Rendered, float]:
    """The model's probability to the encoded result and its foreground fraction: all of one
    request's work after the model, in one call. `matte` (matting.matte, with the service's
    bounds) makes the alpha; without it the mask is upsampled. Takes ownership of
    `prepared.image`."""
    stages = stages or Stages()
    with stages("postprocess"):
        looked_at = prepared.looked_at
        pixels = matte(looked_at, probability) if matte else matting.upsample(probability, looked_at.size)
        alpha = Image.fromarray(pixels, "L")
        if prepared.roi:  # outside the roi is background
            inside, alpha = alpha, Image.new("L", prepared.image.size, 0)
            alpha.paste(inside, prepared.roi[:2])
        if prepared.input_alpha is not None:  # what the input has transparent stays so
            alpha = ImageChops.multiply(alpha, prepared.input_alpha)
        fraction = foreground_fraction(alpha)
    with stages("encode"):
        rendered = render(prepared.image, alpha, spec, prepared.backdrop)
    return rendered, fraction


def foreground_fraction(alpha: Image.Image) -> float:
    return float(np.asarray(alpha, np.float32).mean() / 255)


def render(image: Image.Image, alpha: Image.Image, spec: OutputSpec, background: Image.Image | None = None) -> Rendered:
    """Cleans edges, crops, places, scales, shadows, composites and encodes as `spec` asks.

    `background` is the decoded background_image, if one was sent. Takes ownership of
    `image`: it is changed in place where that saves a full-resolution copy, so callers
    must not use it afterwards.
    """
    if spec.clean_edges:
        image = estimate_foreground(image, alpha)
    backdrop = image.filter(ImageFilter.GaussianBlur(_blur_radius(image.size))) if spec.blur_background else None
    if spec.crop_to_subject:
        box = subject_box(alpha, *_crop_margins(alpha, spec))
        if box is not None:
            image, alpha = image.crop(box), alpha.crop(box)
            backdrop = backdrop.crop(box) if backdrop is not None else None
    if spec.canvas is not None:
        image, alpha = on_canvas(image, alpha, spec)
    elif spec.placed:
        image, alpha = place(image, alpha, spec)
    fitted = _fit(image.size, spec.max_width, spec.max_height)
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        alpha = alpha.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        backdrop = backdrop.resize(fitted, Image.Resampling.BILINEAR) if backdrop is not None else None
    foreground_box = subject_box(alpha)
    shadow = drop_shadow(alpha, foreground_box) if spec.add_shadow and foreground_box else None

    out = io.BytesIO()
    alpha_data = b""
    fmt = spec.format
    if fmt == OutputFormat.OUTPUT_FORMAT_MASK:
        _save_png(alpha, out, spec)
        media_type = "image/png"
    elif fmt in OPAQUE_FORMATS:
        if backdrop is not None:
            flat = backdrop
        elif background is not None:
            flat = _fill(background, image.size, spec)
        else:
            flat = Image.new("RGB", image.size, spec.background)
        if shadow is not None:
            flat.paste((0, 0, 0), mask=shadow)  # darkens what is behind the subject
        flat.paste(image, mask=alpha)  # blends in place: no third full-size image
        if fmt == OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR:
            flat.save(out, "JPEG", quality=spec.quality)
            media_type = "image/jpeg"
        else:
            _save_png(flat, out, spec)
            media_type = "image/png"
    else:
        if shadow is not None:
            image.putalpha(alpha)
            layer = Image.merge("RGBA", (*(Image.new("L", image.size, 0),) * 3, shadow))
            composed = Image.alpha_composite(layer, image)
            image, alpha = composed.convert("RGB"), composed.getchannel("A")
        # Colour under fully transparent pixels is invisible in the picture but
        # recoverable from the file: it is the removed background, so it is zeroed
        # (which also makes the file smaller and faster to compress).
        # A 1-bit mask takes Pillow's fast path: 2.5 ms at 1 MP, against 14 ms with an 8-bit one.
        image.paste(0, mask=alpha.point(lambda v: 255 if v == 0 else 0, "1"))
        if fmt == OutputFormat.OUTPUT_FORMAT_COLOR_ALPHA_PAIR:
            image.save(out, "JPEG", quality=spec.quality)
            media_type = "image/jpeg"
            alpha_out = io.BytesIO()
            _save_png(alpha, alpha_out, spec)
            alpha_data = alpha_out.getvalue()
        else:
            image.putalpha(alpha)  # becomes RGBA in place
            if fmt == OutputFormat.OUTPUT_FORMAT_WEBP:
                # exact: libwebp keeps the zeros above instead of refilling transparent areas
                # from their neighbours (which carried the old background's colour into them).
                image.save(out, "WEBP", quality=spec.quality, method=_webp_method(spec.compression_effort), exact=True)
                media_type = "image/webp"
            else:
                _save_png(image, out, spec, consume=True)
                media_type = "image/png"
    return Rendered(out.getvalue(), media_type, image.width, image.height, foreground_box, alpha_data)


def _blur_radius(size: tuple[int, int]) -> float:
    """Portrait mode's blur: 1 % of the longer side, so it looks the same at any resolution."""
    return max(2.0, max(size) / 100)


def _fill(background: Image.Image, size: tuple[int, int], spec: OutputSpec) -> Image.Image:
    """The background picture on a canvas of `size`: covering it, or fitted inside on the colour."""
    if spec.background_fit == options_pb2.BACKGROUND_FIT_FIT:
        canvas = Image.new("RGB", size, spec.background)
        fitted = ImageOps.contain(background, size, Image.Resampling.LANCZOS)
        canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
        return canvas
    return ImageOps.fit(background, size, Image.Resampling.LANCZOS)


def _crop_margins(alpha: Image.Image, spec: OutputSpec) -> tuple[int, int]:
    """crop_to_subject's margins (x, y) in pixels: crop_margin_px, or a percentage of the subject's size."""
    if not spec.crop_margin_percent:
        return spec.crop_margin_px, spec.crop_margin_px
    box = subject_box(alpha)
    if box is None:
        return 0, 0
    left, top, right, bottom = box
    return round((right - left) * spec.crop_margin_percent / 100), round(
        (bottom - top) * spec.crop_margin_percent / 100
    )


def place(image: Image.Image, alpha: Image.Image, spec: OutputSpec) -> tuple[Image.Image, Image.Image]:
    """The subject moved (and with `scale` resized) on a canvas of the same size.

    The subject's box (pixels at least half opaque) is what `scale` measures and
    `position` places; its soft edges around that box travel with it.
    """
    box = subject_box(alpha)
    if box is None:
        return image, alpha
    layer_box = alpha.getbbox() or box  # every pixel of the subject, soft edges included
    width, height = image.size
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    factor = min(width * spec.scale / 100 / box_w, height * spec.scale / 100 / box_h) if spec.scale else 1.0
    new_w, new_h = max(1, round(box_w * factor)), max(1, round(box_h * factor))
    mode = spec.position or (Position.POSITION_CENTER if spec.scale else Position.POSITION_ORIGINAL)
    if mode == Position.POSITION_CENTER:
        x, y = (width - new_w) / 2, (height - new_h) / 2
    elif mode == Position.POSITION_PERCENT:
        x, y = (width - new_w) * spec.position_percent[0] / 100, (height - new_h) * spec.position_percent[1] / 100
    else:  # the box's centre stays, as far as the canvas allows
        x = min(max(0.0, (box[0] + box[2]) / 2 - new_w / 2), max(0.0, width - new_w))
        y = min(max(0.0, (box[1] + box[3]) / 2 - new_h / 2), max(0.0, height - new_h))
    layer_size = (
        max(1, round((layer_box[2] - layer_box[0]) * factor)),
        max(1, round((layer_box[3] - layer_box[1]) * factor)),
    )
    at = (round(x + (layer_box[0] - box[0]) * factor), round(y + (layer_box[1] - box[1]) * factor))
    colour = image.crop(layer_box)
    coverage = alpha.crop(layer_box)
    if layer_size != colour.size:
        colour = colour.resize(layer_size, Image.Resampling.LANCZOS)
        coverage = coverage.resize(layer_size, Image.Resampling.LANCZOS)
    placed_image, placed_alpha = Image.new("RGB", image.size), Image.new("L", image.size, 0)
    placed_image.paste(colour, at)
    placed_alpha.paste(coverage, at)
    return placed_image, placed_alpha


def on_canvas(image: Image.Image, alpha: Image.Image, spec: OutputSpec) -> tuple[Image.Image, Image.Image]:
    """output_size: the subject on a canvas of exactly spec.canvas, its box (pixels at least
    half opaque) scaled to fit inside the padding (to `scale` percent of that room, if set)
    and placed there as `position` says (CENTER by default; ORIGINAL keeps where the box's
    centre was, relative to the picture). No subject: an empty canvas of the same size."""
    assert spec.canvas is not None
    width, height = spec.canvas
    top, right, bottom, left = spec.padding
    room_w, room_h = width - left - right, height - top - bottom
    canvas_image, canvas_alpha = Image.new("RGB", spec.canvas), Image.new("L", spec.canvas, 0)
    box = subject_box(alpha)
    if box is None:
        return canvas_image, canvas_alpha
    layer_box = alpha.getbbox() or box  # the soft edges travel with the box
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    fill = (spec.scale or 100) / 100
    factor = min(room_w * fill / box_w, room_h * fill / box_h)
    new_w, new_h = min(room_w, max(1, round(box_w * factor))), min(room_h, max(1, round(box_h * factor)))
    free_w, free_h = room_w - new_w, room_h - new_h
    mode = spec.position or Position.POSITION_CENTER
    if mode == Position.POSITION_PERCENT:
        x, y = free_w * spec.position_percent[0] / 100, free_h * spec.position_percent[1] / 100
    elif mode == Position.POSITION_ORIGINAL:
        centre_x, centre_y = (box[0] + box[2]) / 2 / image.width, (box[1] + box[3]) / 2 / image.height
        x = min(max(0.0, centre_x * room_w - new_w / 2), free_w)
        y = min(max(0.0, centre_y * room_h - new_h / 2), free_h)
    else:
        x, y = free_w / 2, free_h / 2
    x, y = left + round(x), top + round(y)
    layer_size = (
        max(1, round((layer_box[2] - layer_box[0]) * factor)),
        max(1, round((layer_box[3] - layer_box[1]) * factor)),
    )
    at = (x + round((layer_box[0] - box[0]) * factor), y + round((layer_box[1] - box[1]) * factor))
    colour, coverage = image.crop(layer_box), alpha.crop(layer_box)
    if layer_size != colour.size:
        colour = colour.resize(layer_size, Image.Resampling.LANCZOS)
        coverage = coverage.resize(layer_size, Image.Resampling.LANCZOS)
    canvas_image.paste(colour, at)
    canvas_alpha.paste(coverage, at)
    return canvas_image, canvas_alpha


def drop_shadow(alpha: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A soft shadow's opacity (an "L" image): the alpha at half strength, moved down and
    right by 3 % and 2 % of the subject's height and blurred by 1 %. The shift is three
    blur radii, so no shadow reaches above the subject's top."""
    subject_h = box[3] - box[1]
    dy, dx = max(3, round(subject_h * 0.03)), round(subject_h * 0.02)
    shadow = Image.new("L", alpha.size, 0)
    shadow.paste(alpha.point(lambda v: v // 2), (dx, dy))
    return shadow.filter(ImageFilter.GaussianBlur(dy / 3))


# The smooth foreground and background estimates are made at most at this resolution.
# pymatting (the maintained implementation of Germer et al.'s multi-level estimate) was
# measured first: 0.25 s at 1 MP and 2.0 s with 1 GB at 12 MP at full resolution, and its
# import compiles all its numba functions, 113 s of CPU here whenever numba's cache is
# absent (a fresh container, a read-only virtualenv). Blur fusion needs box blurs only:
# 0.14 s of CPU at 1 MP, 0.8-1.0 s at 12 MP for this whole function (spill figure in
# tests/mesh/test_options.py: 182, against 197 with pymatting at 0.1 MP and 110 without).
FOREGROUND_WORK_PIXELS = 250_000


def _blur_fusion(image: np.ndarray, alpha: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass of blur fusion (Forte & Pitie, "Approximate fast foreground colour estimation",
    ICIP 2021): alpha-weighted local means of the foreground and of the background, and the
    foreground corrected so that a F + (1 - a) B gives the observed colour back."""
    a = alpha[..., None]
    size = (2 * radius + 1, 2 * radius + 1, 1)
    mean_a = uniform_filter(a, size, mode="nearest")
    fg = uniform_filter(image * a, size, mode="nearest") / (mean_a + 1e-5)
    bg = uniform_filter(image * (1 - a), size, mode="nearest") / (1 - mean_a + 1e-5)
    fg += a * (image - a * fg - (1 - a) * bg)
    return np.clip(fg, 0, 1, out=fg), bg


def estimate_foreground(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """The subject's own colour in its semi-transparent pixels, without the old background's spill.

    A soft edge pixel is I = a F + (1 - a) B. Blur fusion's two passes (a wide one, then
    a narrow one fed with the first's estimates) give smooth F and B at a capped
    resolution; at full resolution each edge pixel then gets F + a (I - a F - (1 - a) B),
    blur fusion's correction step, which puts back the detail the low resolution lost.
    Opaque and transparent pixels are left alone.
    """
    a_full = np.asarray(alpha)
    edge = np.flatnonzero((a_full > 0) & (a_full < 255))
    if edge.size == 0:
        return image
    width, height = image.size
    shrink = min(1.0, (FOREGROUND_WORK_PIXELS / (width * height)) ** 0.5)
    small = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    image_small = np.asarray(image.resize(small, Image.Resampling.BOX), np.float32) / 255
    alpha_small = np.asarray(alpha.resize(small, Image.Resampling.BOX), np.float32) / 255
    # The paper's radii, 90 and 6 pixels at about 1 MP, scaled to the working resolution.
    scale = max(small) / 1000
    fg_wide, bg_small = _blur_fusion(image_small, alpha_small, max(2, round(90 * scale)))
    a = alpha_small[..., None]
    size = max(1, round(6 * scale))
    narrow = (2 * size + 1, 2 * size + 1, 1)
    mean_a = uniform_filter(a, narrow, mode="nearest")
    fg_small = uniform_filter(fg_wide * a, narrow, mode="nearest") / (mean_a + 1e-5)
    bg_small = uniform_filter(bg_small * (1 - a), narrow, mode="nearest") / (1 - mean_a + 1e-5)

    def at_edges(estimate: np.ndarray) -> np.ndarray:
        """The estimate upsampled (bilinear, 8 bits) and read at the edge pixels."""
        full = Image.fromarray(np.uint8(np.clip(estimate * 255 + 0.5, 0, 255)), "RGB").resize(
            image.size, Image.Resampling.BILINEAR
        )
        return np.asarray(full).reshape(-1, 3)[edge].astype(np.float32)

    fg, bg = at_edges(fg_small), at_edges(bg_small)
    a = a_full.reshape(-1)[edge, None].astype(np.float32) / 255
    pixels = np.array(image)  # a writable copy
    flat = pixels.reshape(-1, 3)
    observed = flat[edge].astype(np.float32)
    cleaned = fg + a * (observed - a * fg - (1 - a) * bg)
    flat[edge] = np.clip(cleaned + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _save_png(image: Image.Image, out: io.BytesIO, spec: OutputSpec, *, consume: bool = False) -> None:
    """Effort 1: fpng for colour (RGB, RGBA), about ten times faster than zlib at level 1 and
    a little larger; greyscale (masks), which fpng does not write, and efforts 2-9: zlib
    at that level with its run-length strategy, smaller as the effort rises. `consume`: the
    caller is done with `image`, so fpng's path may close it (free its pixels) early.

    fpng holds the GIL while it encodes (6-15 ms at 1 MP here): other threads' Python waits
    that long, their C work (Pillow, numpy, OpenCV) does not."""
    if spec.compression_effort == 1 and image.mode in ("RGB", "RGBA"):
        pixels = image.tobytes()
        if consume:  # the copy is all fpng needs: the picture's own memory goes now, not after encoding
            image.close()
        out.write(fpng.from_bytes(pixels, image.width, image.height, len(image.mode)))
        return
    image.save(out, "PNG", compress_level=spec.compression_effort, compress_type=_Z_RLE)


def subject_box(alpha: Image.Image, margin_x: int = 0, margin_y: int | None = None) -> tuple[int, int, int, int] | None:
    """Bounding box of the pixels at least half opaque, widened by the margins; None if there are none."""
    box = alpha.point(lambda v: 255 if v >= 128 else 0).getbbox()
    if box is None:
        return None
    margin_y = margin_x if margin_y is None else margin_y
    left, top, right, bottom = box
    return (
        max(0, left - margin_x),
        max(0, top - margin_y),
        min(alpha.width, right + margin_x),
        min(alpha.height, bottom + margin_y),
    )


def preview_size(size: tuple[int, int]) -> tuple[int, int]:
    """SIZE_PREVIEW: `size` scaled down (never up) to at most PREVIEW_PIXELS."""
    width, height = size
    if width * height <= PREVIEW_PIXELS:
        return size
    shrink = (PREVIEW_PIXELS / (width * height)) ** 0.5
    return (max(1, int(width * shrink)), max(1, int(height * shrink)))


def roi_box(
    roi: tuple[int, int, int, int], original: tuple[int, int], now: tuple[int, int]
) -> tuple[int, int, int, int]:
    """options.roi (in the input's pixels, `original`) as a box on the picture as it is `now` (a preview
    may be smaller); refused if it is not inside the picture."""
    left, top, width, height = roi
    if left + width > original[0] or top + height > original[1]:
        raise invalid_argument(
            f"roi ({left}, {top}, {width}x{height}) reaches outside the {original[0]}x{original[1]} picture; "
            "give a rectangle inside it",
            field="options.roi",
        )
    fx, fy = now[0] / original[0], now[1] / original[1]
    box = (int(left * fx), int(top * fy), round((left + width) * fx), round((top + height) * fy))
    return (box[0], box[1], max(box[0] + 1, box[2]), max(box[1] + 1, box[3]))


def _fit(size: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    width, height = size
    scale = min(
        1.0,
        max_width / width if max_width else 1.0,
        max_height / height if max_height else 1.0,
    )
    return (max(1, round(width * scale)), max(1, round(height * scale)))
