"""Erasing marked regions of a picture: masks, the fill, and encoding. Pure functions, no I/O.

Two fills, chosen per region (connected component of the mask) by its thickness, twice
the largest distance from a marked pixel to the nearest unmarked one:

- thin regions (text, logo strokes, scratches: thickness <= THIN_PX) get OpenCV's
  Telea fast-marching inpainting (or Navier-Stokes when asked), which carries the
  colours and isophotes of the border a few pixels in and is exact enough there;
- compact regions up to LARGE_PX thick get a multi-scale exemplar fill (`patch_fill`):
  PatchMatch (Barnes et al. 2009) nearest-neighbour fields with Wexler-style voting,
  coarse to fine, which copies texture from the rest of the picture instead of smearing it;
- larger ones get Telea again, which measured better there (see THIN_PX).

Pixels outside the mask are never written: the output is the input array with only
masked pixels replaced, so lossless formats give them back bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import grpc
import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from cutout.v1 import erase_pb2
from services.common.errors import ServiceError, invalid_argument
from services.common.output_spec import CORRUPT_DATA
from services.inference.imaging import DecodeLimits, open_image

EraseMethod = erase_pb2.EraseMethod
EraseFormat = erase_pb2.EraseFormat

# The rule AUTO applies, from measurements on the tuning photo (astronaut; held-out
# photos are only scored, in bench/erase.py): Telea beat the patch fill in PSNR and SSIM
# on text strokes 3-20 px thick, the patch fill beat Telea on a compact blob 16 px across
# (29.7 vs 17.1 dB), split with it at 32 px (lower PSNR, higher SSIM), and on blobs of
# 64 px and more Telea scored higher on both (the patch fill's copied texture rarely
# lands where the truth had it). So:
# thickness <= THIN_PX or > LARGE_PX -> Telea, in between -> the patch fill.
THIN_PX = 12.0
LARGE_PX = 40.0
# Telea/NS look this far around each pixel they fill.
INPAINT_RADIUS = 5
# The patch fill: patch side 2r+1, and the most target patches one pyramid level may
# have; finer levels than that are upsampled instead, so big masks take bounded time.
PATCH_RADIUS = 3
MAX_PATCH_TARGETS = 60_000
# What one picture may give to the patch fill, in regions and marked pixels; regions past
# either get Telea. A region of ~400 px took 0.1-0.4 s of one core here (by the load),
# and one region's time is bounded by MAX_PATCH_TARGETS, so a picture stays within seconds.
MAX_PATCH_REGIONS = 24
MAX_PATCH_PIXELS = 100_000
MAX_BOXES = 1000
# What one erase (one credit) may ask at most: separate regions (a mask of isolated dots
# every 3 px over 4 MP was 444,889 regions and 25 s of CPU; each region costs a pass of
# its own), and marked pixels (Telea's time follows them). Past either: INVALID_ARGUMENT,
# before any fill runs, so an erase stays within seconds.
MAX_REGIONS = 1000
MAX_MARKED_PIXELS = 4_000_000

_CV_METHOD = {EraseMethod.ERASE_METHOD_TELEA: cv2.INPAINT_TELEA, EraseMethod.ERASE_METHOD_NAVIER_STOKES: cv2.INPAINT_NS}


@dataclass(frozen=True)
class Region:
    """One filled region: its bounds (x, y, width, height), marked pixels and the fill used."""

    box: tuple[int, int, int, int]
    pixels: int
    thickness: float
    method: int


@dataclass(frozen=True)
class Picture:
    """A decoded picture for erasing: its pixels as they were (no colour conversion)."""

    rgb: np.ndarray  # uint8 HxWx3
    alpha: np.ndarray | None  # uint8 HxW, kept as it was
    icc_profile: bytes | None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def decode_picture(image: Image.Image) -> Picture:
    """An opened picture (see imaging.open_image) upright, its samples untouched.

    No colour conversion (the profile is passed on to the output instead), so the
    unmarked pixels survive bit for bit.
    """
    try:
        image.load()
        icc = image.info.get("icc_profile")
        image = ImageOps.exif_transpose(image) or image
    except CORRUPT_DATA as exc:
        raise invalid_argument(
            f"image data is corrupt or truncated ({exc}); send the complete file", field="image"
        ) from None
    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    pixels = np.array(image.convert("RGBA" if has_alpha else "RGB"))
    if has_alpha:
        return Picture(np.ascontiguousarray(pixels[..., :3]), np.ascontiguousarray(pixels[..., 3]), icc)
    return Picture(pixels, None, icc)


@dataclass(frozen=True)
class EraseSpec:
    """Validated EraseOptions."""

    method: int
    format: int
    quality: int

    @classmethod
    def from_proto(cls, options: erase_pb2.EraseOptions, jpeg_quality: int) -> EraseSpec:
        field = "regions.options"
        if options.method not in EraseMethod.values():
            known = ", ".join(EraseMethod.keys())
            raise invalid_argument(
                f"unknown erase method {options.method}; use one of {known}", field=f"{field}.method"
            )
        if options.format not in EraseFormat.values():
            known = ", ".join(n for n in EraseFormat.keys() if n != "ERASE_FORMAT_UNSPECIFIED")
            raise invalid_argument(
                f"unknown erase format {options.format}; use one of {known}", field=f"{field}.format"
            )
        if options.quality > 100:
            raise invalid_argument(
                f"quality {options.quality} is out of range; use 1 to 100, or 0 for the server's default",
                field=f"{field}.quality",
            )
        return cls(options.method, options.format or EraseFormat.ERASE_FORMAT_PNG, options.quality or jpeg_quality)


def marks(regions: erase_pb2.EraseRegions, size: tuple[int, int], limits: DecodeLimits) -> np.ndarray:
    """The pixels to erase: the mask's and the boxes', refusing a request that marks none."""
    if not regions.mask and not regions.boxes:
        raise invalid_argument(
            "nothing to erase: send a mask image (regions.mask) or rectangles (regions.boxes)", field="regions"
        )
    marked = boxes_mask(regions.boxes, size)
    if regions.mask:
        mask = read_mask(regions.mask, size, limits)
        if not mask.any():
            raise invalid_argument(
                "the mask marks no pixel (none has luminance >= 128); paint what to erase in white",
                field="regions.mask",
                reason="EMPTY_MASK",
            )
        marked |= mask
    return marked


def read_mask(data: bytes, size: tuple[int, int], limits: DecodeLimits, field: str = "regions.mask") -> np.ndarray:
    """A mask image to a boolean array: pixels at least half white (luminance >= 128) are erased.

    A mask with transparency counts its transparent pixels as black. It must have the
    picture's size (after EXIF orientation of both).
    """
    try:
        image = open_image(data, limits)
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except ServiceError as error:  # open_image's errors name the field "image": say it is the mask
        raise invalid_argument(
            f"the mask is refused: {error.message}; send a PNG (or JPEG/WebP) whose white pixels mark what to erase",
            field=field,
            reason=error.reason or "INVALID_ARGUMENT",
        ) from None
    except CORRUPT_DATA as exc:
        raise invalid_argument(
            f"mask data is corrupt or truncated ({exc}); send the complete file", field=field
        ) from None
    if image.size != size:
        raise invalid_argument(
            f"mask is {image.width}x{image.height} but the image is {size[0]}x{size[1]}; "
            "send a mask of the image's size",
            field=field,
            reason="MASK_SIZE_MISMATCH",
        )
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("L")) >= 128


def boxes_mask(boxes: Sequence[erase_pb2.Box], size: tuple[int, int], field: str = "regions.boxes") -> np.ndarray:
    """Rectangles to a boolean mask, refusing any that is empty or not wholly inside the picture."""
    width, height = size
    if len(boxes) > MAX_BOXES:
        raise invalid_argument(
            f"{len(boxes)} boxes; at most {MAX_BOXES} are accepted. Send a mask image instead", field=field
        )
    mask = np.zeros((height, width), bool)
    for i, box in enumerate(boxes):
        if box.width == 0 or box.height == 0:
            raise invalid_argument(
                f"box {i} is {box.width}x{box.height}; give every box a width and height of at least 1",
                field=f"{field}[{i}]",
            )
        if box.x + box.width > width or box.y + box.height > height:
            raise invalid_argument(
                f"box {i} (x={box.x}, y={box.y}, {box.width}x{box.height}) reaches outside the "
                f"{width}x{height} picture; keep x+width <= {width} and y+height <= {height}",
                field=f"{field}[{i}]",
                reason="BOX_OUTSIDE_IMAGE",
            )
        mask[box.y : box.y + box.height, box.x : box.x + box.width] = True
    return mask


def find_regions(mask: np.ndarray, method: int = 0) -> tuple[np.ndarray, list[Region]]:
    """The mask's regions (connected components) and the fill each gets; also their label image.

    `method` is an EraseMethod; AUTO (0) chooses per region by thickness (see THIN_PX).
    Past MAX_PATCH_REGIONS regions or MAX_PATCH_PIXELS marked pixels given to the patch
    fill (in raster order; the first always gets it), further regions get Telea instead
    (the response says so per region), so many marks take bounded time.
    """
    marked = int(np.count_nonzero(mask))
    if marked > MAX_MARKED_PIXELS:
        raise invalid_argument(
            f"the marks cover {marked:,} pixels; one erase fills at most {MAX_MARKED_PIXELS:,}. Mark less, or "
            "send the picture in parts",
            field="regions",
        )
    labels, count = ndimage.label(mask)
    if count > MAX_REGIONS:
        raise invalid_argument(
            f"the marks form {count:,} separate regions; one erase fills at most {MAX_REGIONS:,}. Join nearby "
            "marks into larger ones (e.g. widen them by a pixel or two) or send fewer",
            field="regions",
        )
    height, width = mask.shape
    regions = []
    patch_regions = patch_pixels = 0
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        # The distance transform of this region alone, in its box plus a pixel: memory
        # follows the region, not the picture.
        top, left = max(0, rows.start - 1), max(0, cols.start - 1)
        part = labels[top : min(height, rows.stop + 1), left : min(width, cols.stop + 1)] == index
        thickness = 2 * float(ndimage.distance_transform_edt(part).max())
        pixels = int(part.sum())
        chosen = method
        if chosen == EraseMethod.ERASE_METHOD_AUTO:
            patch = THIN_PX < thickness <= LARGE_PX
            chosen = EraseMethod.ERASE_METHOD_PATCH if patch else EraseMethod.ERASE_METHOD_TELEA
        if chosen == EraseMethod.ERASE_METHOD_PATCH:
            if patch_regions >= MAX_PATCH_REGIONS or (patch_pixels and patch_pixels + pixels > MAX_PATCH_PIXELS):
                chosen = EraseMethod.ERASE_METHOD_TELEA
            else:
                patch_regions += 1
                patch_pixels += pixels
        box = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        regions.append(Region(box, pixels, thickness, int(chosen)))
    return labels, regions


def erase(rgb: np.ndarray, mask: np.ndarray, method: int = 0, seed: int = 0) -> tuple[np.ndarray, list[Region]]:
    """Fills the masked pixels of `rgb` (uint8 HxWx3) with the classical fills; the rest is copied unchanged.

    `method` is an EraseMethod other than MODEL; AUTO (0) chooses per region by thickness
    (see THIN_PX). The fill is deterministic for a given `seed`.
    """
    labels, regions = find_regions(mask, method)
    out = rgb.copy()
    for cv_method in (cv2.INPAINT_TELEA, cv2.INPAINT_NS):
        # All regions of one OpenCV method in one call: it only works near the marked pixels.
        chosen_labels = [i + 1 for i, r in enumerate(regions) if _CV_METHOD.get(r.method) == cv_method]
        if chosen_labels:
            part = np.isin(labels, chosen_labels)
            filled = cv2.inpaint(rgb, part.astype(np.uint8), INPAINT_RADIUS, cv_method)
            out[part] = filled[part]
    rng = np.random.default_rng(seed)
    for i, region in enumerate(regions):
        if region.method == EraseMethod.ERASE_METHOD_PATCH:
            _fill_region(out, mask, labels, i + 1, region, rng)
    return out, regions


def model_fill(rgb: np.ndarray, mask: np.ndarray, filled: np.ndarray) -> tuple[np.ndarray, list[Region]]:
    """A learned model's output taken on the masked pixels only (the rest stays the input's)."""
    if filled.shape != rgb.shape or filled.dtype != np.uint8:
        raise ServiceError(
            grpc.StatusCode.INTERNAL,
            f"the inpainting model answered {filled.dtype}{list(filled.shape)}, not uint8{list(rgb.shape)}",
            reason="MODEL_FAILED",
        )
    out = rgb.copy()
    out[mask] = filled[mask]
    return out, find_regions(mask, EraseMethod.ERASE_METHOD_MODEL)[1]


def _fill_region(
    out: np.ndarray, mask: np.ndarray, labels: np.ndarray, index: int, region: Region, rng: np.random.Generator
) -> None:
    """Patch-fills one region inside a window around it (sources come from that window)."""
    x, y, w, h = region.box
    height, width = mask.shape
    margin = max(24, int(region.thickness * 1.5), max(w, h) // 2)
    top, bottom = max(0, y - margin), min(height, y + h + margin)
    left, right = max(0, x - margin), min(width, x + w + margin)
    window = (slice(top, bottom), slice(left, right))
    filled = patch_fill(out[window], mask[window], rng)
    target = labels[window] == index
    out[window][target] = filled[target]


def patch_fill(rgb: np.ndarray, hole: np.ndarray, rng: np.random.Generator, radius: int = PATCH_RADIUS) -> np.ndarray:
    """Multi-scale exemplar fill of `hole` in `rgb` (uint8 HxWx3) from its unmarked pixels.

    A pyramid is built down to where the hole is a few patches thick; the coarsest level
    starts from Telea's fill. At each level, coarse to fine, a few rounds of: PatchMatch
    (random candidates, propagation from the four neighbours, random search at halving
    radii, all vectorised over the target patches), then every hole pixel becomes the
    mean of what the patches covering it say. The field found at one level starts the
    next. Levels with more than MAX_PATCH_TARGETS target patches are not refined: the
    last refined result is upsampled, so the time stays bounded.
    """
    if not hole.any():
        return rgb
    known = ~hole
    if known.sum() < (2 * radius + 1) ** 2 * 4:  # next to nothing to copy from
        return cv2.inpaint(rgb, hole.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
    thickness = 2 * float(ndimage.distance_transform_edt(hole).max())
    levels = max(0, math.ceil(math.log2(max(1.0, thickness / (2 * radius + 2)))))
    while levels > 0 and min(rgb.shape[:2]) >> levels < 4 * (2 * radius + 1):
        levels -= 1

    images, holes = [rgb.astype(np.float32)], [hole]
    for _ in range(levels):
        img, hl = images[-1], holes[-1]
        size = ((img.shape[1] + 1) // 2, (img.shape[0] + 1) // 2)
        weight = cv2.resize((~hl).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        summed = cv2.resize(img * (~hl)[..., None], size, interpolation=cv2.INTER_AREA)
        images.append(summed / np.maximum(weight, 1e-6)[..., None])
        holes.append(weight < 0.999)  # any marked pixel below makes the coarse pixel unknown

    coarse_hole = holes[-1]
    start = cv2.inpaint(
        np.clip(images[-1], 0, 255).astype(np.uint8), coarse_hole.astype(np.uint8), 3, cv2.INPAINT_TELEA
    )
    current = images[-1].copy()
    current[coarse_hole] = start[coarse_hole]
    field = None
    for level in range(levels, -1, -1):
        img, hl = images[level], holes[level]
        if level < levels:
            up = cv2.resize(current, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
            current = img.copy()
            current[hl] = up[hl]
        targets = int(ndimage.binary_dilation(hl, iterations=radius).sum())
        if targets > MAX_PATCH_TARGETS:
            continue  # bounded time: keep the upsampled fill at this level
        rounds = 4 if level == levels else 2
        current, field = _refine(current, hl, field, rounds, radius, rng)
    out = rgb.copy()
    out[hole] = np.clip(np.rint(current[hole]), 0, 255).astype(np.uint8)
    return out


def _refine(
    image: np.ndarray,
    hole: np.ndarray,
    coarse_field: np.ndarray | None,
    rounds: int,
    r: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """PatchMatch + voting rounds at one level; returns the image and its field (source y, x per pixel)."""
    height, width = hole.shape
    # Sources: patches wholly inside the picture and wholly unmarked.
    valid = ndimage.binary_erosion(~hole, np.ones((2 * r + 1, 2 * r + 1), bool), border_value=0)
    src_y, src_x = np.nonzero(valid)
    if src_y.size == 0:
        return image, np.zeros((2, height, width), np.int32)
    targets = ndimage.binary_dilation(hole, iterations=r)
    ty, tx = np.nonzero(targets)
    # Field: every pixel's source centre (identity outside the targets).
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.int32)
    fy, fx = grid_y.copy(), grid_x.copy()
    pick = rng.integers(0, src_y.size, ty.size)
    fy[ty, tx], fx[ty, tx] = src_y[pick], src_x[pick]
    if coarse_field is not None:  # the coarser level's field, scaled up, where it still lands on a source
        cy = np.clip(coarse_field[0][ty // 2, tx // 2] * 2 + ty % 2, 0, height - 1)
        cx = np.clip(coarse_field[1][ty // 2, tx // 2] * 2 + tx % 2, 0, width - 1)
        ok = valid[cy, cx]
        fy[ty[ok], tx[ok]], fx[ty[ok], tx[ok]] = cy[ok], cx[ok]

    # Patch offsets as arrays, so a patch of every target is gathered in one indexing op.
    dys, dxs = (d.ravel() for d in np.mgrid[-r : r + 1, -r : r + 1])
    hy, hx = np.nonzero(hole)
    # The patches q covering each hole pixel p (q = p - d), for voting.
    qy = np.clip(hy[:, None] - dys, 0, height - 1)
    qx = np.clip(hx[:, None] - dxs, 0, width - 1)

    def patches(img: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
        """(N, (2r+1)^2, 3) patches centred at (cy, cx) of the edge-padded `img`."""
        return img[cy[:, None] + dys + r, cx[:, None] + dxs + r]

    for _ in range(rounds):
        pad = np.pad(image, ((r, r), (r, r), (0, 0)), mode="edge")
        mine = patches(pad, ty, tx)

        def distance(cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
            diff = patches(pad, cy, cx) - mine  # noqa: B023 (used within this round only)
            return np.einsum("ijk,ijk->i", diff, diff)

        def consider(cy: np.ndarray, cx: np.ndarray, best: np.ndarray) -> None:
            cy = np.clip(cy, 0, height - 1)
            cx = np.clip(cx, 0, width - 1)
            ok = valid[cy, cx]
            d = np.where(ok, distance(cy, cx), np.inf)
            better = d < best
            best[better] = d[better]
            fy[ty[better], tx[better]] = cy[better]
            fx[ty[better], tx[better]] = cx[better]

        best = distance(fy[ty, tx], fx[ty, tx])
        for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0)):  # propagation from each neighbour
            ny, nx = np.clip(ty - sy, 0, height - 1), np.clip(tx - sx, 0, width - 1)
            consider(fy[ny, nx] + sy, fx[ny, nx] + sx, best)
        span = max(height, width)
        while span >= 1:  # random search around the current match, at halving radii
            consider(
                fy[ty, tx] + rng.integers(-span, span + 1, ty.size),
                fx[ty, tx] + rng.integers(-span, span + 1, ty.size),
                best,
            )
            span //= 2
        pick = rng.integers(0, src_y.size, ty.size)  # and one fresh random source
        consider(src_y[pick], src_x[pick], best)
        # Voting: pixel p takes the mean of what each patch q covering it says, source(q) + (p - q).
        votes = image[np.clip(fy[qy, qx] + dys, 0, height - 1), np.clip(fx[qy, qx] + dxs, 0, width - 1)]
        image = image.copy()
        image[hy, hx] = votes.mean(axis=1)
    return image, np.stack([fy, fx])


@dataclass(frozen=True)
class Encoded:
    data: bytes
    media_type: str


def encode(picture: Picture, rgb: np.ndarray, fmt: int, quality: int) -> Encoded:
    """The erased picture in `fmt`, with the input's alpha and colour profile (PNG and WebP lossless)."""
    image = Image.fromarray(rgb, "RGB")
    if picture.alpha is not None and fmt != EraseFormat.ERASE_FORMAT_JPEG:
        image.putalpha(Image.fromarray(picture.alpha, "L"))
    extra = {"icc_profile": picture.icc_profile} if picture.icc_profile else {}
    out = io.BytesIO()
    if fmt == EraseFormat.ERASE_FORMAT_JPEG:
        image.save(out, "JPEG", quality=quality, **extra)
        return Encoded(out.getvalue(), "image/jpeg")
    if fmt == EraseFormat.ERASE_FORMAT_WEBP:
        image.save(out, "WEBP", lossless=True, method=1, exact=True, **extra)
        return Encoded(out.getvalue(), "image/webp")
    image.save(out, "PNG", compress_level=1, **extra)
    return Encoded(out.getvalue(), "image/png")
