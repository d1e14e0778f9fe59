"""The quality figures (bench/matte_scores.py) on hand-made mattes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.matte_scores import EDGE_PX, FAR_PX, edge_band, far_background, score, summary


def _square(size: int = 100, top: int = 30, bottom: int = 70) -> np.ndarray:
    alpha = np.zeros((size, size), np.float32)
    alpha[top:bottom, top:bottom] = 1
    return alpha


def test_a_perfect_matte_scores_perfectly():
    truth = _square()
    scores = score(truth, truth)
    assert (scores.iou, scores.mae, scores.edge, scores.ghost) == (1.0, 0.0, 0.0, 0.0)
    assert scores.s_measure > 0.99 and scores.weighted_f > 0.99 and scores.e_measure > 0.99


def test_iou_and_mae_of_a_square_shifted_by_known_amounts():
    truth, shifted = _square(), _square(top=40, bottom=80)  # 30x30 overlap of two 40x40 squares
    scores = score(shifted, truth)
    assert scores.iou == pytest.approx(900 / (1600 + 1600 - 900))
    assert scores.mae == pytest.approx((1600 - 900) * 2 / 10_000)


def test_the_edge_error_sees_only_the_band_around_the_outline():
    truth = _square()
    band = edge_band(truth)
    # The band: EDGE_PX pixels either side of the square's outline, nothing at its centre or the corners.
    assert band[50, 30] and band[50, 30 - EDGE_PX] and band[50, 30 + EDGE_PX - 1]
    assert not band[50, 50] and not band[0, 0] and not band[50, 30 - EDGE_PX - 2]
    halo = truth.copy()
    halo[band & (truth == 0)] = 0.4  # a grey halo just outside the outline
    scores = score(halo, truth)
    assert scores.edge == pytest.approx(0.4 * (band & (truth == 0)).sum() / band.sum(), rel=1e-5)
    assert scores.ghost == 0.0  # the halo is near the subject, not far background
    assert scores.iou == 1.0  # ... and below 0.5: IoU cannot see it, which is why the edge figure exists


def test_a_ghost_is_far_background_kept_and_a_faint_one_counts_too():
    truth = _square()
    far = far_background(truth)
    assert far[0, 0] and not far[50, 30 - FAR_PX + 1] and not far[50, 50]
    ghosted = truth.copy()
    ghosted[:10, :] = 0.06  # a faint strip of old background, just over GHOST_ALPHA
    scores = score(ghosted, truth)
    assert scores.ghost == pytest.approx(1000 / far.sum())
    assert score(np.where(truth > 0, 1.0, 0.04).astype(np.float32), truth).ghost == 0.0  # below GHOST_ALPHA


def test_a_summary_keeps_the_worst_image():
    truth = _square()
    good, poor = score(truth, truth), score(_square(top=40, bottom=80), truth)
    total = summary([good, poor])
    assert total["worst_iou"] == poor.iou and total["worst_edge"] == poor.edge
    assert total["iou"] == pytest.approx((good.iou + poor.iou) / 2)


def test_shapes_must_agree():
    with pytest.raises(ValueError):
        score(np.zeros((4, 4)), np.zeros((4, 5)))
