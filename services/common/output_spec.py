"""The output options of a removal, checked without decoding a pixel.

Both the gateway (which refuses bad options before it reserves a credit) and inference
(which renders them) read options through `OutputSpec.from_proto`; it lives here so the
gateway does not import inference's image stack (OpenCV, SciPy, the encoders).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import ImageColor

from cutout.v1 import options_pb2
from services.common.errors import invalid_argument

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
# What Pillow raises on corrupt or truncated data: its documented OSError, SyntaxError and
# ValueError, and what fuzz/decode.py found beyond them (an iCCP chunk cut short after the
# pixels: IndexError from the chunk parser; struct.error and EOFError from short reads).
CORRUPT_DATA: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, IndexError, EOFError, struct.error)
OutputFormat = options_pb2.OutputFormat
Size = options_pb2.Size
Position = options_pb2.Position
# SIZE_PREVIEW: at most a quarter of a megapixel.
PREVIEW_PIXELS = 250_000
# output_size: the largest canvas side, and the largest padding_percent per side.
MAX_CANVAS_SIDE = 10_000
MAX_CANVAS_PIXELS = 25_000_000  # the input cap (inference's max_pixels): memory is bounded alike
MAX_PADDING_PERCENT = 45
# The formats a background (colour, image or blur) shows in.
OPAQUE_FORMATS = (OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR, OutputFormat.OUTPUT_FORMAT_PNG_ON_COLOR)


@dataclass(frozen=True)
class EncoderDefaults:
    compression_effort: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90


@dataclass(frozen=True)
class OutputSpec:
    """Validated output options (RemoveBackgroundOptions minus what the gateway owns).

    `format` is concrete: OUTPUT_FORMAT_AUTO is resolved here (JPEG on the background
    when one was asked for, else PNG), since the options alone decide transparency.
    """

    format: int
    background: tuple[int, int, int]
    crop_to_subject: bool
    crop_margin_px: int
    max_width: int
    max_height: int
    compression_effort: int
    quality: int
    crop_margin_percent: int = 0
    size: int = Size.SIZE_FULL
    background_image: bool = False  # bytes came; the picture itself is decoded by the caller
    background_fit: int = options_pb2.BACKGROUND_FIT_COVER
    blur_background: bool = False
    scale: int = 0
    position: int = Position.POSITION_UNSPECIFIED
    position_percent: tuple[int, int] = (50, 50)
    roi: tuple[int, int, int, int] | None = None  # left, top, width, height in input pixels
    add_shadow: bool = False
    clean_edges: bool = False
    # output_size: the canvas (width, height) and its padding (top, right, bottom, left) in pixels.
    canvas: tuple[int, int] | None = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def placed(self) -> bool:
        return bool(self.scale) or self.position != Position.POSITION_UNSPECIFIED or self.canvas is not None

    @classmethod
    def from_proto(cls, options: options_pb2.RemoveBackgroundOptions, defaults: EncoderDefaults) -> OutputSpec:
        fmt = options.format or OutputFormat.OUTPUT_FORMAT_PNG
        if fmt not in OutputFormat.values():
            known = ", ".join(n for n in OutputFormat.keys() if n != "OUTPUT_FORMAT_UNSPECIFIED")
            raise invalid_argument(f"unknown output format {fmt}; use one of {known}", field="options.format")
        try:
            background = ImageColor.getcolor(options.background_color or "white", "RGB")
            # Pillow passes "rgb(999999999999,0,0)" through unclipped; a channel is one byte.
            if not all(isinstance(c, int) and 0 <= c <= 255 for c in background):  # type: ignore[union-attr]
                raise ValueError("a channel out of 0-255")
        except ValueError:
            raise invalid_argument(
                f"background_color {options.background_color[:40]!r} is not a colour; "
                "use a CSS colour such as '#1e90ff', 'rgb(30,144,255)' (channels 0 to 255) or 'white'",
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
        has_image = bool(options.background_image)
        _check_backdrop(options, fmt, has_image)
        if fmt == OutputFormat.OUTPUT_FORMAT_AUTO:
            opaque = bool(options.background_color) or has_image or options.blur_background
            fmt = OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR if opaque else OutputFormat.OUTPUT_FORMAT_PNG
        _check_effects(options, fmt)
        position_percent = _check_placement(options)
        _check_crop(options)
        canvas, padding = _check_canvas(options)
        size = options.size or Size.SIZE_FULL
        if size not in Size.values():
            raise invalid_argument(
                f"unknown size {size}; use SIZE_PREVIEW, SIZE_FULL or SIZE_AUTO", field="options.size"
            )
        roi = None
        if options.HasField("roi"):
            r = options.roi
            if not (r.width and r.height):
                raise invalid_argument("roi needs a width and a height of at least 1 pixel", field="options.roi")
            roi = (r.left, r.top, r.width, r.height)
        jpeg = fmt in (OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR, OutputFormat.OUTPUT_FORMAT_COLOR_ALPHA_PAIR)
        default_quality = defaults.jpeg_quality if jpeg else defaults.webp_quality
        return cls(
            format=fmt,
            background=background,  # type: ignore[arg-type]  # getcolor(..., "RGB") gives 3 ints
            crop_to_subject=options.crop_to_subject,
            crop_margin_px=options.crop_margin_px,
            max_width=options.max_width,
            max_height=options.max_height,
            compression_effort=options.compression_effort or defaults.compression_effort,
            quality=options.quality or default_quality,
            crop_margin_percent=options.crop_margin_percent,
            size=size,
            background_image=has_image,
            background_fit=options.background_fit or options_pb2.BACKGROUND_FIT_COVER,
            blur_background=options.blur_background,
            scale=options.scale,
            position=options.position,
            position_percent=position_percent,
            roi=roi,
            add_shadow=options.add_shadow,
            clean_edges=options.clean_edges,
            canvas=canvas,
            padding=padding,
        )


_OPAQUE_NAMES = "OUTPUT_FORMAT_AUTO, OUTPUT_FORMAT_JPEG_ON_COLOR or OUTPUT_FORMAT_PNG_ON_COLOR"


def _check_backdrop(options: options_pb2.RemoveBackgroundOptions, fmt: int, has_image: bool) -> None:
    """A background image or blur needs a format that shows a background, and one of them only."""
    for wanted, field in ((has_image, "background_image"), (options.blur_background, "blur_background")):
        if wanted and fmt not in (*OPAQUE_FORMATS, OutputFormat.OUTPUT_FORMAT_AUTO):
            raise invalid_argument(
                f"{field} makes an opaque picture; use format {_OPAQUE_NAMES} with it", field=f"options.{field}"
            )
    if has_image and options.blur_background:
        raise invalid_argument(
            "background_image and blur_background both set; choose one background", field="options.blur_background"
        )
    if options.background_fit and not has_image:
        raise invalid_argument("background_fit needs a background_image", field="options.background_fit")
    if options.background_fit not in options_pb2.BackgroundFit.values():
        raise invalid_argument(
            f"unknown background_fit {options.background_fit}; use BACKGROUND_FIT_COVER or BACKGROUND_FIT_FIT",
            field="options.background_fit",
        )


def _check_effects(options: options_pb2.RemoveBackgroundOptions, fmt: int) -> None:
    if fmt == OutputFormat.OUTPUT_FORMAT_MASK:
        for field in ("add_shadow", "clean_edges"):
            if getattr(options, field):
                raise invalid_argument(
                    f"{field} changes colours; OUTPUT_FORMAT_MASK has none. Use another format or drop {field}",
                    field=f"options.{field}",
                )


def _check_placement(options: options_pb2.RemoveBackgroundOptions) -> tuple[int, int]:
    if options.scale and not 10 <= options.scale <= 100:
        raise invalid_argument(
            f"scale {options.scale} is out of range; use 10 to 100 (percent of the canvas), or 0 to keep the size",
            field="options.scale",
        )
    if options.position not in Position.values():
        raise invalid_argument(
            f"unknown position {options.position}; use POSITION_CENTER, POSITION_ORIGINAL or POSITION_PERCENT",
            field="options.position",
        )
    percent = options.position == Position.POSITION_PERCENT
    for axis in ("x", "y"):
        value = getattr(options, f"position_{axis}_percent")
        if value and not percent:
            raise invalid_argument(
                f"position_{axis}_percent needs position POSITION_PERCENT", field=f"options.position_{axis}_percent"
            )
        if value > 100:
            raise invalid_argument(
                f"position_{axis}_percent {value} is out of range; use 0 to 100",
                field=f"options.position_{axis}_percent",
            )
    placed = bool(options.scale) or options.position != Position.POSITION_UNSPECIFIED
    if placed and options.crop_to_subject:
        raise invalid_argument(
            "crop_to_subject cannot be combined with scale or position (the crop puts the subject at the edges); "
            "drop one of them",
            field="options.crop_to_subject",
        )
    if placed and options.blur_background:
        raise invalid_argument(
            "blur_background keeps the subject where the photo has it; it cannot be combined with scale or position",
            field="options.blur_background",
        )
    return (options.position_x_percent, options.position_y_percent) if percent else (50, 50)


def _check_canvas(
    options: options_pb2.RemoveBackgroundOptions,
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int]]:
    """output_size: the canvas and its padding in pixels, or (None, zeros) when unset."""
    if not options.HasField("output_size"):
        return None, (0, 0, 0, 0)
    wanted = options.output_size
    field = "options.output_size"
    if not (1 <= wanted.width <= MAX_CANVAS_SIDE and 1 <= wanted.height <= MAX_CANVAS_SIDE):
        raise invalid_argument(
            f"output_size {wanted.width}x{wanted.height}: width and height must each be 1 to {MAX_CANVAS_SIDE}",
            field=field,
        )
    if wanted.width * wanted.height > MAX_CANVAS_PIXELS:
        raise invalid_argument(
            f"output_size {wanted.width}x{wanted.height} is over {MAX_CANVAS_PIXELS // 1_000_000} megapixels",
            field=field,
        )
    if wanted.HasField("padding") and wanted.padding_percent:
        raise invalid_argument("output_size: give padding or padding_percent, not both", field=f"{field}.padding")
    if wanted.padding_percent > MAX_PADDING_PERCENT:
        raise invalid_argument(
            f"output_size.padding_percent {wanted.padding_percent} is over the cap; use 0 to {MAX_PADDING_PERCENT}",
            field=f"{field}.padding_percent",
        )
    if wanted.HasField("padding"):
        p = wanted.padding
        padding = (p.top, p.right, p.bottom, p.left)
    else:
        x, y = round(wanted.width * wanted.padding_percent / 100), round(wanted.height * wanted.padding_percent / 100)
        padding = (y, x, y, x)
    top, right, bottom, left = padding
    if left + right >= wanted.width or top + bottom >= wanted.height:
        raise invalid_argument(
            f"output_size: the padding leaves no room for the subject on a {wanted.width}x{wanted.height} canvas",
            field=f"{field}.padding",
        )
    for other in ("crop_to_subject", "max_width", "max_height", "blur_background"):
        if getattr(options, other):
            raise invalid_argument(
                f"output_size fixes the output's size and framing; {other} cannot be combined with it",
                field=f"options.{other}",
            )
    if (options.size == Size.SIZE_PREVIEW) and wanted.width * wanted.height > PREVIEW_PIXELS:
        raise invalid_argument(
            f"SIZE_PREVIEW is at most {PREVIEW_PIXELS} pixels; an output_size of {wanted.width}x{wanted.height} "
            "needs SIZE_FULL",
            field=field,
        )
    return (wanted.width, wanted.height), padding


def _check_crop(options: options_pb2.RemoveBackgroundOptions) -> None:
    if not options.crop_margin_percent:
        return
    if not options.crop_to_subject:
        raise invalid_argument("crop_margin_percent needs crop_to_subject", field="options.crop_margin_percent")
    if options.crop_margin_px:
        raise invalid_argument(
            "crop_margin_px and crop_margin_percent both set; give the margin one way",
            field="options.crop_margin_percent",
        )
    if options.crop_margin_percent > 50:
        raise invalid_argument(
            f"crop_margin_percent {options.crop_margin_percent} is over the cap; use 0 to 50 (percent of the "
            "subject's size)",
            field="options.crop_margin_percent",
        )


def check_subject(options: options_pb2.RemoveBackgroundOptions) -> None:
    """`subject` is a known value and not given with `model` (which model a name means is the
    catalog's business, in the inference service)."""
    subject = options.subject or options_pb2.Subject.SUBJECT_AUTO
    if subject not in options_pb2.Subject.values():
        known = ", ".join(n for n in options_pb2.Subject.keys() if n != "SUBJECT_UNSPECIFIED")
        raise invalid_argument(f"unknown subject {subject}; use one of {known}", field="options.subject")
    if options.model and subject != options_pb2.Subject.SUBJECT_AUTO:
        raise invalid_argument(
            "options.model and options.subject both choose the model; set one of them", field="options.model"
        )
