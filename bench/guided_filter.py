"""The refinement Cutout used before the detail levels, kept here only so that
`python -m bench.quality` can measure what removing it changed: the fast guided filter
(He & Sun, 2015) on the picture's luminance at 512 px, radius 4, epsilon 1e-3, as
services/inference/imaging.py's `refine_mask` did up to commit 1b4da82 (its one-piece path)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def guided_filter(
    image: Image.Image, mask: np.ndarray, guide_side: int = 512, radius: int = 4, eps: float = 1e-3
) -> np.ndarray:
    """The model's low-resolution mask as uint8 alpha at the picture's size."""
    width, height = image.size
    scale = min(1.0, guide_side / max(width, height))
    low = (max(1, round(width * scale)), max(1, round(height * scale)))
    luminance = np.asarray(image.convert("L"))
    guide = cv2.resize(luminance, low, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    prior = cv2.resize(np.asarray(mask, np.float32), low, interpolation=cv2.INTER_LINEAR)

    def box(values: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(values, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p, mean_ip, mean_ii = box(guide), box(prior), box(guide * prior), box(guide * guide)
    a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    full_a = cv2.resize(box(a), (width, height), interpolation=cv2.INTER_LINEAR)
    full_b = cv2.resize(box(b) * 255 + 0.5, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(full_a * luminance + full_b, 0, 255).astype(np.uint8)
