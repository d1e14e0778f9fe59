"""Everything the inference service does to pixels, in memory: decode, model input,
mask refinement, compositing and encoding. Pure functions, no I/O, no gRPC."""

from __future__ import annotations

import io
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageColor, ImageOps, UnidentifiedImageError
from scipy.ndimage import uniform_filter

from cutout.v1 import options_pb2
from services.common.errors import ServiceError, invalid_argument

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
OutputFormat = options_pb2.OutputFormat
_SRGB = ImageCms.createProfile("sRGB")
# decode() checks DecodeLimits.max_pixels itself right after reading the header, and
# says the size it saw; Pillow's own global bomb check would refuse without saying it.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int


# zlib's run-length strategy: on 1 MP cut-outs and photos it was both faster and
# smaller than the default strategy at every level (57 ms vs 68 ms at level 1,
# 66 ms vs 311 ms at level 6; see the README's benchmark notes).
_Z_RLE = 3


@dataclass(frozen=True)
class EncoderDefaults:
    compression_effort: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90


def _webp_method(effort: int) -> int:
    """Effort 1-9 onto WebP's methods 0-6 (method 0 took 75 ms on 1 MP, method 4 180 ms)."""
    return min(6, (effort - 1) * 6 // 8)


@dataclass(frozen=True)
class OutputSpec:
    """Validated output options (RemoveBackgroundOptions minus what the gateway owns)."""

    format: int
    background: tuple[int, int, int]
    crop_to_subject: bool
    crop_margin_px: int
    max_width: int
    max_height: int
    compression_effort: int
    quality: int

    @classmethod
    def from_proto(cls, options: options_pb2.RemoveBackgroundOptions, defaults: EncoderDefaults) -> OutputSpec:
        fmt = options.format or OutputFormat.OUTPUT_FORMAT_PNG
        if fmt not in OutputFormat.values():
            known = ", ".join(n for n in OutputFormat.keys() if n != "OUTPUT_FORMAT_UNSPECIFIED")
            raise invalid_argument(f"unknown output format {fmt}; use one of {known}", field="options.format")
        try:
            background = ImageColor.getcolor(options.background_color or "white", "RGB")
        except ValueError:
            raise invalid_argument(
                f"background_color {options.background_color!r} is not a colour; "
                "use a CSS colour such as '#1e90ff', 'rgb(30,144,255)' or 'white'",
                field="options.background_color",
            ) from None
        if options.compression_effort > 9:
            raise invalid_argument(
                f"compression_effort {options.compression_effort} is out of range; use 1 (fastest) "
                "to 9 (smallest), or 0 for the server's default",
                field="options.compression_effort",
            )
        if options.quality > 100:
            raise invalid_argument(
                f"quality {options.quality} is out of range; use 1 to 100, or 0 for the server's default",
                field="options.quality",
            )
        default_quality = (
            defaults.jpeg_quality if fmt == OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR else (defaults.webp_quality)
        )
        return cls(
            format=fmt,
            background=background,  # type: ignore[arg-type]  # getcolor(..., "RGB") gives 3 ints
            crop_to_subject=options.crop_to_subject,
            crop_margin_px=options.crop_margin_px,
            max_width=options.max_width,
            max_height=options.max_height,
            compression_effort=options.compression_effort or defaults.compression_effort,
            quality=options.quality or default_quality,
        )


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str
    width: int
    height: int


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
    except (OSError, SyntaxError, ValueError) as exc:
        raise invalid_argument(f"image header could not be read: {exc}", field="image") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)
    return image


def decode_pixels(image: Image.Image) -> Image.Image:
    """An opened image to upright sRGB RGB pixels, refusing corrupt or truncated data."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_srgb(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise invalid_argument(
            f"image data is corrupt or truncated ({exc}); send the complete file", field="image"
        ) from None


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


def _to_srgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "CMYK"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            mode = "RGB" if image.mode in ("RGB", "CMYK", "L") else "RGBA"
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile: take the pixels as sRGB
    return image if image.mode == "RGB" else image.convert("RGB")


_BAND_ROWS = 256


def refine_mask(
    image: Image.Image,
    mask: np.ndarray,
    *,
    guide_side: int = 512,
    radius: int = 4,
    eps: float = 1e-3,
    helpers: Executor | None = None,
) -> Image.Image:
    """Upsamples the model's low-resolution mask to the image with a fast guided filter.

    The filter (He & Sun, "Fast Guided Filter", 2015) fits the mask locally as a
    linear function of the image's luminance at a reduced resolution, then applies
    the upsampled coefficients to the full-resolution luminance, so edges follow
    the picture (hair, sleeves) instead of the model's 256-pixel grid.
    Returns the alpha matte as an "L" image of the picture's size.

    With `helpers`, the independent box filters and the bands of rows run on its
    threads (scipy and Pillow release the GIL), so one picture uses the cores a quiet
    machine has spare; the result is the same. Its tasks never wait for each other, so
    it must not be the executor this function itself runs on.
    """
    spread = helpers.map if helpers is not None else map
    width, height = image.size
    scale = min(1.0, guide_side / max(width, height))
    low = (max(1, round(width * scale)), max(1, round(height * scale)))
    guide_full = image.convert("L")
    guide = np.asarray(guide_full.resize(low, Image.Resampling.BILINEAR, reducing_gap=3.0), np.float32) / 255
    prior = np.asarray(Image.fromarray(mask.astype(np.float32), "F").resize(low, Image.Resampling.BILINEAR))
    size = 2 * radius + 1

    def box(values: np.ndarray) -> np.ndarray:
        return uniform_filter(values, size)

    mean_i, mean_p, mean_ip, mean_ii = spread(box, [guide, prior, guide * prior, guide * guide])
    a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    mean_a, mean_b = spread(box, [a, b])
    # On 255-scaled luminance g, alpha * 255 = mean_a * g + 255 * mean_b. The
    # coefficients are upsampled and applied one band of rows at a time, so no
    # full-resolution float array ever exists (a 12 MP picture would need ~48 MB each).
    coeff_a = Image.fromarray(mean_a, "F")
    coeff_b = Image.fromarray(mean_b * 255 + 0.5, "F")
    luminance = np.asarray(guide_full)
    alpha = np.empty((height, width), np.uint8)
    rows_per_low_row = height / low[1]

    def fill_band(top: int) -> None:
        bottom = min(height, top + _BAND_ROWS)
        region = (0.0, top / rows_per_low_row, float(low[0]), bottom / rows_per_low_row)
        band_size = (width, bottom - top)
        band = np.multiply(
            np.asarray(coeff_a.resize(band_size, Image.Resampling.BILINEAR, box=region)),
            luminance[top:bottom],
            dtype=np.float32,
        )
        band += np.asarray(coeff_b.resize(band_size, Image.Resampling.BILINEAR, box=region))
        np.clip(band, 0.0, 255.0, out=band)
        alpha[top:bottom] = band  # +0.5 above makes this truncation round

    for _ in spread(fill_band, range(0, height, _BAND_ROWS)):  # bands write disjoint rows
        pass
    return Image.fromarray(alpha, "L")


def foreground_fraction(alpha: Image.Image) -> float:
    return float(np.asarray(alpha, np.float32).mean() / 255)


def render(image: Image.Image, alpha: Image.Image, spec: OutputSpec) -> Rendered:
    """Crops, scales, composites and encodes as `spec` asks.

    Takes ownership of `image`: it is changed in place where that saves a
    full-resolution copy, so callers must not use it afterwards.
    """
    if spec.crop_to_subject:
        box = subject_box(alpha, spec.crop_margin_px)
        if box is not None:
            image, alpha = image.crop(box), alpha.crop(box)
    fitted = _fit(image.size, spec.max_width, spec.max_height)
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        alpha = alpha.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)

    out = io.BytesIO()
    fmt = spec.format
    if fmt == OutputFormat.OUTPUT_FORMAT_MASK:
        _save_png(alpha, out, spec)
        media_type = "image/png"
    elif fmt in (OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR, OutputFormat.OUTPUT_FORMAT_PNG_ON_COLOR):
        flat = Image.new("RGB", image.size, spec.background)
        flat.paste(image, mask=alpha)  # blends in place: no third full-size image
        if fmt == OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR:
            flat.save(out, "JPEG", quality=spec.quality)
            media_type = "image/jpeg"
        else:
            _save_png(flat, out, spec)
            media_type = "image/png"
    else:
        # Colour under fully transparent pixels is invisible; zeroing it makes the
        # file smaller and faster to compress.
        image.paste(0, mask=alpha.point(lambda v: 0 if v else 255))
        image.putalpha(alpha)  # becomes RGBA in place
        rgba = image
        if fmt == OutputFormat.OUTPUT_FORMAT_WEBP:
            rgba.save(out, "WEBP", quality=spec.quality, method=_webp_method(spec.compression_effort))
            media_type = "image/webp"
        else:
            _save_png(rgba, out, spec)
            media_type = "image/png"
    return Rendered(out.getvalue(), media_type, image.width, image.height)


def _save_png(image: Image.Image, out: io.BytesIO, spec: OutputSpec) -> None:
    image.save(out, "PNG", compress_level=spec.compression_effort, compress_type=_Z_RLE)


def subject_box(alpha: Image.Image, margin: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the pixels at least half opaque, widened by `margin`; None if there are none."""
    box = alpha.point(lambda v: 255 if v >= 128 else 0).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (
        max(0, left - margin),
        max(0, top - margin),
        min(alpha.width, right + margin),
        min(alpha.height, bottom + margin),
    )


def _fit(size: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    width, height = size
    scale = min(
        1.0,
        max_width / width if max_width else 1.0,
        max_height / height if max_height else 1.0,
    )
    return (max(1, round(width * scale)), max(1, round(height * scale)))
