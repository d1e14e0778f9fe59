"""Masks for `cutout erase-batch`: the same watermark over a whole folder.

Either a mask drawn once (white marks what to erase), stretched to each picture's size
since a repeated watermark keeps its place relative to the picture, or a colour rule:
pixels within `tolerance` of a colour (largest difference of the R, G and B values),
optionally only inside a rectangle, grown by a few pixels to take in anti-aliased edges.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageFilter, ImageOps

from cutout.v1 import erase_pb2


def parse_box(text: str) -> erase_pb2.Box:
    """'x,y,w,h' to a Box (for argparse)."""
    try:
        x, y, width, height = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not x,y,width,height (four whole numbers)") from None
    if min(x, y, width, height) < 0:
        raise ValueError(f"{text!r} has a negative number")
    return erase_pb2.Box(x=x, y=y, width=width, height=height)


def picture_size(image: bytes) -> tuple[int, int]:
    """Width and height as the server sees the picture (after EXIF orientation)."""
    with Image.open(io.BytesIO(image)) as opened:
        return (ImageOps.exif_transpose(opened) or opened).size


def png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class TemplateMask:
    """One mask for every picture, stretched to its size."""

    mask: Image.Image  # "L"

    @classmethod
    def load(cls, data: bytes) -> TemplateMask:
        return cls(Image.open(io.BytesIO(data)).convert("L"))

    def __call__(self, image: bytes) -> bytes:
        size = picture_size(image)
        if self.mask.size == size:
            return png(np.asarray(self.mask) >= 128)
        return png(np.asarray(self.mask.resize(size, Image.Resampling.NEAREST)) >= 128)


@dataclass(frozen=True)
class ColourMask:
    """Pixels close to a colour, optionally only within a box, grown by `grow` pixels."""

    colour: tuple[int, int, int]
    tolerance: int = 40
    within: erase_pb2.Box | None = None
    grow: int = 1

    @classmethod
    def parse(cls, colour: str, tolerance: int, within: erase_pb2.Box | None, grow: int) -> ColourMask:
        rgb = ImageColor.getcolor(colour, "RGB")  # ValueError for what is not a colour
        return cls(rgb, tolerance, within, grow)  # type: ignore[arg-type]

    def __call__(self, image: bytes) -> bytes:
        with Image.open(io.BytesIO(image)) as opened:
            upright = (ImageOps.exif_transpose(opened) or opened).convert("RGB")
        pixels = np.asarray(upright, np.int16)
        close = np.abs(pixels - np.array(self.colour, np.int16)).max(axis=2) <= self.tolerance
        if self.within is not None:
            inside = np.zeros_like(close)
            box = self.within
            inside[box.y : box.y + box.height, box.x : box.x + box.width] = True
            close &= inside
        if not close.any():
            raise ValueError(f"no pixel is within {self.tolerance} of the colour {self.colour}")
        mask = Image.fromarray(close.astype(np.uint8) * 255, "L")
        if self.grow:
            mask = mask.filter(ImageFilter.MaxFilter(2 * self.grow + 1))
        return png(np.asarray(mask) >= 128)
