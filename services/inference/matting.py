"""A segmentation model's mask to an alpha matte at the picture's size.

The model sees the picture at 256 or 320 pixels, so its mask is right about where the
subject is and wrong about the last few pixels of its outline. Two ways on from there:

- `upsample`: the mask resized to the picture, bilinear. Fast, and better than the fast
  guided filter this replaced, which copied the background's texture into the edge
  (bench/quality.py measures both).
- `matte`: closed-form alpha matting (Levin, Lischinski & Weiss, 2008, as `pymatting`
  implements it) in a thin band around the mask's outline: inside the band the alpha is
  solved from the picture's own colours, so hair and fur follow the photo, not the model's
  grid. It works on the picture scaled to at most `side` pixels (so its cost is bounded
  whatever the upload) and stops after `max_iterations` of the conjugate-gradient solve.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from pymatting import cf_laplacian, cg, ichol

SOLID = 0.5  # a mask value at least this is the subject
# Diagonal shifts for the incomplete Cholesky preconditioner, tried in turn. They change
# only how fast the solve converges, not its answer; pymatting's own first tries (0, 1e-4)
# fail on most mattes here and print a warning each time.
_SHIFTS = [1e-2, 1e-1, 1.0, 10.0, 100.0]


def upsample(probability: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask at `size` (width, height), as uint8 alpha."""
    low = np.clip(probability * 255 + 0.5, 0, 255).astype(np.uint8)
    return cv2.resize(low, size, interpolation=cv2.INTER_LINEAR)


def trimap(alpha: np.ndarray, band: int) -> np.ndarray:
    """1 inside the subject, 0 outside, 0.5 within `band` pixels of the outline (float64)."""
    solid = (alpha >= SOLID).astype(np.uint8)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    unknown = cv2.dilate(solid, disc) != cv2.erode(solid, disc)
    result = solid.astype(np.float64)
    result[unknown] = 0.5
    return result


def matte(
    image: Image.Image, probability: np.ndarray, *, side: int = 640, band: int = 3, max_iterations: int = 400
) -> np.ndarray:
    """The alpha matte of `image` (RGB) from the model's mask, as uint8 at the image's size."""
    scale = min(1.0, side / max(image.size))
    small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = image if small == image.size else image.resize(small, Image.Resampling.BILINEAR)
    coarse = cv2.resize(np.asarray(probability, np.float32), small, interpolation=cv2.INTER_LINEAR)
    tri = trimap(coarse, band)
    unknown = tri.ravel() == 0.5
    if tri.min() > 0 or tri.max() < 1 or not unknown.any():
        return upsample(probability, image.size)  # all subject or all background: nothing to solve
    known = ~unknown
    laplacian = cf_laplacian(np.asarray(pixels, np.float64) / 255, is_known=known.reshape(tri.shape))
    # The unknown pixels' alpha x solves L_UU x = -L_UK alpha_K (Grady et al., 2005).
    inside = laplacian[unknown][:, unknown]
    outside = laplacian[unknown][:, known]
    solved = tri.ravel().copy()
    try:
        preconditioner = ichol(inside, shifts=_SHIFTS)
        solved[unknown] = cg(inside, -outside.dot(solved[known]), M=preconditioner, maxiter=max_iterations)
    except ValueError:  # no preconditioner, or not converged in time: the plain mask
        return upsample(probability, image.size)
    alpha = np.clip(solved.reshape(tri.shape) * 255 + 0.5, 0, 255).astype(np.uint8)
    return alpha if small == image.size else cv2.resize(alpha, image.size, interpolation=cv2.INTER_LINEAR)
