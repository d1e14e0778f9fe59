"""The mask to alpha step (services/inference/matting.py) on pictures whose answer is known."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.inference import matting


def _disc_picture(size: int = 256, radius: float = 80.0) -> tuple[Image.Image, np.ndarray]:
    """A bright disc on a dark, textured background, and its exact coverage (anti-aliased
    over 4x4 subpixels)."""
    fine = 4 * size
    yy, xx = np.mgrid[0:fine, 0:fine]
    inside = ((xx + 0.5) / 4 - size / 2) ** 2 + ((yy + 0.5) / 4 - size / 2) ** 2 <= radius**2
    coverage = inside.reshape(size, 4, size, 4).mean(axis=(1, 3))
    rng = np.random.default_rng(3)
    background = 40 + rng.integers(0, 30, (size, size, 1))
    foreground = np.array([230, 200, 120])
    pixels = coverage[..., None] * foreground + (1 - coverage[..., None]) * background
    return Image.fromarray(pixels.astype(np.uint8)), coverage


def _coarse(coverage: np.ndarray, side: int = 32) -> np.ndarray:
    """What a low-resolution model would say: the coverage on a coarse grid, blurred by it."""
    return np.asarray(Image.fromarray(coverage.astype(np.float32), "F").resize((side, side), Image.Resampling.BOX))


def test_upsampling_keeps_the_mask_and_its_size():
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    alpha = matting.upsample(mask, (64, 48))
    assert alpha.shape == (48, 64) and alpha.dtype == np.uint8
    assert alpha[24, 32] == 255 and alpha[0, 0] == 0


def test_the_trimap_marks_a_band_around_the_outline():
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1
    tri = matting.trimap(mask, band=2)
    assert tri[20, 20] == 1 and tri[0, 0] == 0
    # Two pixels either side of the outline (between columns 9 and 10) are unknown.
    assert [tri[20, x] for x in range(7, 13)] == [0, 0.5, 0.5, 0.5, 0.5, 1]


def test_matting_follows_the_picture_where_the_coarse_mask_cannot():
    image, truth = _disc_picture()
    coarse = _coarse(truth)
    plain = matting.upsample(coarse, image.size).astype(np.float32) / 255
    matted = matting.matte(image, coarse, side=256, band=6).astype(np.float32) / 255
    edge = (truth > 0.01) & (truth < 0.99) | (np.abs(plain - truth) > 0.1)
    plain_error, matted_error = np.abs(plain - truth)[edge].mean(), np.abs(matted - truth)[edge].mean()
    assert matted_error < 0.5 * plain_error, (plain_error, matted_error)
    assert np.abs(matted - truth).max() < 0.35  # no pixel far off, inside or out


def test_matting_works_at_a_bounded_size_and_answers_at_the_full_one():
    image, truth = _disc_picture(512, 160)
    alpha = matting.matte(image, _coarse(truth), side=128, band=2)
    assert alpha.shape == (512, 512)
    assert np.abs(alpha.astype(np.float32) / 255 - truth).mean() < 0.02


def test_a_mask_without_subject_or_without_background_is_only_upsampled():
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    for value in (0.0, 1.0):
        mask = np.full((16, 16), value, np.float32)
        assert np.array_equal(matting.matte(image, mask), matting.upsample(mask, image.size))


def test_a_solve_that_does_not_converge_in_its_iterations_falls_back_to_the_mask():
    image, truth = _disc_picture()
    coarse = _coarse(truth)
    assert np.array_equal(
        matting.matte(image, coarse, side=256, band=6, max_iterations=1), matting.upsample(coarse, image.size)
    )
