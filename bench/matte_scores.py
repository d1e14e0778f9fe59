"""How close an alpha matte is to the truth, where a person looks: at the edge and far from it.

- `iou`: intersection over union of the two masks at alpha >= 0.5;
- `mae`: mean absolute alpha error over the whole picture;
- `edge`: mean absolute alpha error within EDGE_PX pixels of the truth's outline (the
  alpha = 0.5 contour), where hair, fur and halos are, and where whole-picture figures
  drown in the easy pixels;
- `ghost`: the share of the far background (more than FAR_PX pixels from anything the
  truth covers at all) that the matte keeps at alpha >= GHOST_ALPHA: a faint copy of the
  old background that a viewer sees on a dark page;
- `s_measure`, `e_measure`, `weighted_f`: the salient-object metrics of the field, from
  pysodmetrics (structure similarity, enhanced alignment, weighted F-beta).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import py_sod_metrics

EDGE_PX = 6
FAR_PX = 16
GHOST_ALPHA = 0.05


@dataclass(frozen=True)
class MatteScores:
    iou: float
    mae: float
    edge: float
    ghost: float
    s_measure: float
    e_measure: float
    weighted_f: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def edge_band(truth: np.ndarray, width: int = EDGE_PX) -> np.ndarray:
    """Pixels within `width` of the truth's alpha = 0.5 outline, on either side."""
    solid = (truth >= 0.5).astype(np.uint8)
    inside = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - solid, cv2.DIST_L2, 5)
    return np.where(solid > 0, inside, outside) <= width


def far_background(truth: np.ndarray, distance: int = FAR_PX) -> np.ndarray:
    """Pixels more than `distance` from any the truth covers at all (alpha >= GHOST_ALPHA)."""
    covered = (truth >= GHOST_ALPHA).astype(np.uint8)
    return cv2.distanceTransform(1 - covered, cv2.DIST_L2, 5) > distance


def score(matte: np.ndarray, truth: np.ndarray) -> MatteScores:
    """Both float alpha in [0, 1], the same shape."""
    if matte.shape != truth.shape:
        raise ValueError(f"matte {matte.shape} and truth {truth.shape} differ in shape")
    matte, truth = matte.astype(np.float32), truth.astype(np.float32)
    error = np.abs(matte - truth)
    solid, solid_truth = matte >= 0.5, truth >= 0.5
    union = int((solid | solid_truth).sum())
    band, far = edge_band(truth), far_background(truth)
    metrics = py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure()
    prediction, target = (matte * 255 + 0.5).astype(np.uint8), (truth * 255 + 0.5).astype(np.uint8)
    for metric in metrics:
        metric.step(pred=prediction, gt=target)
    s_measure, e_measure, weighted_f = metrics
    return MatteScores(
        iou=float((solid & solid_truth).sum() / union) if union else 1.0,
        mae=float(error.mean()),
        edge=float(error[band].mean()) if band.any() else 0.0,
        ghost=float((matte[far] >= GHOST_ALPHA).mean()) if far.any() else 0.0,
        s_measure=float(s_measure.get_results()["sm"]),
        e_measure=float(e_measure.get_results()["em"]["adp"]),
        weighted_f=float(weighted_f.get_results()["wfm"]),
    )


def summary(scores: list[MatteScores]) -> dict[str, float]:
    """Means over a set, and the worst image of the three figures the targets bound."""
    means = {key: float(np.mean([getattr(s, key) for s in scores])) for key in MatteScores.__dataclass_fields__}
    return {
        **means,
        "worst_iou": min(s.iou for s in scores),
        "worst_edge": max(s.edge for s in scores),
        "worst_ghost": max(s.ghost for s in scores),
    }
