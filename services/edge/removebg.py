"""remove.bg's API v1.0 parameters, as its public documentation describes them, mapped to
Cutout's RemoveBackgroundRequest; what Cutout cannot honour is refused (400), never ignored.

The mapping is syntax only: whether the options make sense together is decided once, by the
gateway (services/common/output_spec.py), whose INVALID_ARGUMENT comes back as a 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image

from cutout.v1 import cutout_pb2, options_pb2
from services.edge.body import Fields

OutputFormat = options_pb2.OutputFormat

# remove.bg's sizes. "medium" (1.5 MP) and "hd" (4 MP) have no Cutout twin: FULL is the
# input's own resolution and PREVIEW 0.25 MP, so they are refused rather than guessed.
SIZES = {
    "preview": options_pb2.SIZE_PREVIEW,
    "small": options_pb2.SIZE_PREVIEW,
    "regular": options_pb2.SIZE_PREVIEW,
    "full": options_pb2.SIZE_FULL,
    "4k": options_pb2.SIZE_FULL,
    "50mp": options_pb2.SIZE_FULL,
    "auto": options_pb2.SIZE_AUTO,
}
# remove.bg's foreground types: the person model for people, the general one for the rest.
TYPES = {
    "auto": options_pb2.SUBJECT_AUTO,
    "person": options_pb2.SUBJECT_PERSON,
    "product": options_pb2.SUBJECT_ANY,
    "animal": options_pb2.SUBJECT_ANY,
    "car": options_pb2.SUBJECT_ANY,
    "transportation": options_pb2.SUBJECT_ANY,
    "graphic": options_pb2.SUBJECT_ANY,
    "other": options_pb2.SUBJECT_ANY,
}
# The fields this edge reads; any other is refused, so a typo is not silently ignored.
KNOWN_FIELDS = {
    "image_file",
    "image_file_b64",
    "image_url",
    "size",
    "type",
    "type_level",
    "format",
    "roi",
    "crop",
    "crop_margin",
    "scale",
    "position",
    "channels",
    "bg_color",
    "bg_image_url",
    "bg_image_file",
    "add_shadow",
    "semitransparency",
}
ORIENTATION = 0x0112  # the EXIF tag
_HEX_COLOUR = re.compile(r"^(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_PX = re.compile(r"^(\d{1,6})(px)?$")
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")


class Refused(Exception):
    """A 400 in remove.bg's shape: `code` is the machine-readable part."""

    def __init__(self, detail: str, code: str = "invalid_parameter", title: str = "Invalid parameters") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.title = title


@dataclass
class Translated:
    request: cutout_pb2.RemoveBackgroundRequest
    # remove.bg's format=zip: Cutout's COLOR_ALPHA_PAIR, zipped by the edge as color.jpg + alpha.png.
    zipped: bool = False


def translate(fields: Fields, idempotency_key: str = "") -> Translated:
    unknown = sorted((set(fields.text) | set(fields.files)) - KNOWN_FIELDS)
    if unknown:
        raise Refused(f"unknown parameter {unknown[0]!r}; see GET /openapi.json for the ones this API takes")
    text = {key: value.strip() for key, value in fields.text.items()}
    request = cutout_pb2.RemoveBackgroundRequest(idempotency_key=idempotency_key)
    options = request.options
    _image(fields, text, request)

    options.size = _choice("size", text.get("size", "preview").lower(), SIZES)
    options.subject = _choice("type", text.get("type", "auto").lower(), TYPES)
    level = text.get("type_level", "1").lower()
    if level not in ("none", "1", "latest"):
        raise Refused("type_level 2 (sub-types such as car_interior) is not offered; use none, 1 or latest")

    colour = text.get("bg_color", "")
    if colour:
        options.background_color = f"#{colour}" if _HEX_COLOUR.match(colour) else colour
    if "bg_image_file" in fields.files:
        options.background_image = fields.files["bg_image_file"]
    if text.get("bg_image_url"):
        options.background_image_url = text["bg_image_url"]
    opaque = bool(colour or options.background_image or options.background_image_url)
    zipped = _format(text.get("format", "auto").lower(), text.get("channels", "rgba").lower(), opaque, options)

    if _flag(text, "crop", False):
        options.crop_to_subject = True
        _crop_margin(text.get("crop_margin", "0"), options)
    elif text.get("crop_margin", "0") not in ("0", "0px", "0%"):
        raise Refused("crop_margin needs crop=true")
    _scale_and_position(text.get("scale", "original"), text.get("position", "original"), options)
    if text.get("roi"):
        _roi(text["roi"], request.image, options)
    options.add_shadow = _flag(text, "add_shadow", False)
    if not _flag(text, "semitransparency", True):
        raise Refused("semitransparency=false is not offered: Cutout's mask always keeps semi-transparent edges")
    return Translated(request, zipped)


def _image(fields: Fields, text: dict[str, str], request: cutout_pb2.RemoveBackgroundRequest) -> None:
    given = [name for name in ("image_file", "image_file_b64", "image_url") if name in fields.files or text.get(name)]
    if len(given) != 1:
        raise Refused(
            "send exactly one of image_file, image_file_b64 or image_url"
            + (f" (got {', '.join(given)})" if given else ""),
            code="missing_source" if not given else "invalid_parameter",
        )
    (source,) = given
    if source == "image_file":
        if "image_file" not in fields.files:
            raise Refused("image_file must be a file part of a multipart/form-data body")
        request.image = fields.files["image_file"]
    elif source == "image_file_b64":
        try:
            request.image = base64.b64decode(text["image_file_b64"], validate=False)
        except (binascii.Error, ValueError):
            raise Refused("image_file_b64 is not valid base64") from None
    else:
        request.image_url = text["image_url"]


def _choice(name: str, value: str, table: dict[str, int]) -> int:
    if value not in table:
        raise Refused(f"{name} {value!r} is not offered; use one of {', '.join(table)}")
    return table[value]


def _flag(text: dict[str, str], name: str, default: bool) -> bool:
    value = text.get(name, "").lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise Refused(f"{name} must be true or false, not {value!r}")


def _format(fmt: str, channels: str, opaque: bool, options: options_pb2.RemoveBackgroundOptions) -> bool:
    if channels not in ("rgba", "alpha"):
        raise Refused(f"channels {channels!r} is not offered; use rgba or alpha")
    if channels == "alpha":
        if fmt not in ("auto", "png"):
            raise Refused("channels=alpha comes as a greyscale PNG: use format auto or png")
        if opaque:
            raise Refused("channels=alpha is the mask alone: a background (bg_color, bg_image_*) does not apply")
        options.format = OutputFormat.OUTPUT_FORMAT_MASK
        return False
    if fmt == "auto":
        options.format = OutputFormat.OUTPUT_FORMAT_AUTO
    elif fmt == "png":
        options.format = OutputFormat.OUTPUT_FORMAT_PNG_ON_COLOR if opaque else OutputFormat.OUTPUT_FORMAT_PNG
    elif fmt == "jpg":
        # JPEG has no alpha: the subject on the colour asked for, white by default (as remove.bg).
        options.format = OutputFormat.OUTPUT_FORMAT_JPEG_ON_COLOR
    elif fmt == "webp":
        if opaque:
            raise Refused("format=webp is transparent here; for a background use format png, jpg or auto")
        options.format = OutputFormat.OUTPUT_FORMAT_WEBP
    elif fmt == "zip":
        if opaque:
            raise Refused("format=zip holds the colour and the alpha; a background does not apply")
        options.format = OutputFormat.OUTPUT_FORMAT_COLOR_ALPHA_PAIR
        return True
    else:
        raise Refused(f"format {fmt!r} is not offered; use auto, png, jpg, webp or zip")
    return False


def _crop_margin(value: str, options: options_pb2.RemoveBackgroundOptions) -> None:
    parts = value.split()
    if len(set(parts)) != 1:
        raise Refused("crop_margin with different values per side is not offered; give one value (30px or 10%)")
    (margin,) = set(parts)
    if match := _PX.match(margin):
        options.crop_margin_px = int(match.group(1))
    elif (match := _PERCENT.match(margin)) and float(match.group(1)) == int(float(match.group(1))):
        options.crop_margin_percent = int(float(match.group(1)))
    else:
        raise Refused(f"crop_margin {value!r} is neither pixels (30px) nor a whole percentage (10%)")


def _scale_and_position(scale: str, position: str, options: options_pb2.RemoveBackgroundOptions) -> None:
    if scale.lower() != "original":
        match = _PERCENT.match(scale)
        if not match or float(match.group(1)) != int(float(match.group(1))):
            raise Refused(f"scale {scale!r} must be original or a whole percentage (10% to 100%)")
        options.scale = int(float(match.group(1)))
    position = position.lower()
    if position == "original":
        options.position = options_pb2.POSITION_ORIGINAL if options.scale else options_pb2.POSITION_UNSPECIFIED
        return
    if position == "center":
        options.position = options_pb2.POSITION_CENTER
        return
    parts = position.split()
    percents = [_PERCENT.match(part) for part in parts]
    if not 1 <= len(parts) <= 2 or not all(percents):
        raise Refused(f"position {position!r} must be original, center, or one or two percentages (x% y%)")
    values = [int(float(m.group(1))) for m in percents if m]
    options.position = options_pb2.POSITION_PERCENT
    options.position_x_percent = values[0]
    options.position_y_percent = values[-1]


def _roi(value: str, image: bytes, options: options_pb2.RemoveBackgroundOptions) -> None:
    """remove.bg's `x1 y1 x2 y2`, in pixels or percentages of the picture (which needs its
    size: read from the header, turned as its EXIF orientation says, as inference will)."""
    parts = value.split()
    if len(parts) != 4:
        raise Refused("roi must be four values: x1 y1 x2 y2 (pixels, or percentages like 10%)")
    if all(part.endswith("%") for part in parts):
        if parts == ["0%", "0%", "100%", "100%"]:
            return  # the whole picture: remove.bg's default
        if not image:
            raise Refused("roi in percentages needs the picture itself (image_file or image_file_b64)")
        width, height = _picture_size(image)
        numbers = []
        for part, whole in zip(parts, (width, height, width, height), strict=True):
            match = _PERCENT.match(part)
            if not match or float(match.group(1)) > 100:
                raise Refused(f"roi value {part!r} is not a percentage from 0% to 100%")
            numbers.append(round(float(match.group(1)) * whole / 100))
    else:
        numbers = []
        for part in parts:
            match = _PX.match(part)
            if not match:
                raise Refused(f"roi value {part!r}: give all four in pixels (120 or 120px) or all in percentages")
            numbers.append(int(match.group(1)))
    x1, y1, x2, y2 = numbers
    if x2 <= x1 or y2 <= y1:
        raise Refused("roi must have x2 > x1 and y2 > y1")
    options.roi.CopyFrom(options_pb2.Rect(left=x1, top=y1, width=x2 - x1, height=y2 - y1))


def _picture_size(image: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(image)) as picture:  # the header only: no pixel is decoded
            width, height = picture.size
            # EXIF orientations 5 to 8 turn the picture a quarter: width and height swap.
            turned = picture.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
            return (height, width) if turned else (width, height)
    except Exception:  # undecodable: the gateway says so, with its own words, on the image itself
        raise Refused("roi in percentages needs a readable JPEG, PNG or WebP picture", code="unknown_format") from None
