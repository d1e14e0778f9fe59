"""The detail levels: which model cuts a picture out and how its mask becomes the alpha.

Chosen by measured quality (`python -m bench.quality`, soft-edge composites): on portraits
too, U²-Net-p's and U²-Net's outlines are closer to the truth than the person model's, and
alpha matting in a band around the outline brings every model closer still; the person
model stays the fast path for portraits. The fine level also estimates the foreground's
colours at the edge (as `clean_edges` does), which takes the old background's colour off
hair for a few per cent of its time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cutout.v1 import options_pb2
from services.common.errors import invalid_argument
from services.inference import matting
from services.inference.settings import InferenceSettings

Detail = options_pb2.Detail
NAMES = {"fast": Detail.DETAIL_FAST, "balanced": Detail.DETAIL_BALANCED, "fine": Detail.DETAIL_FINE}


@dataclass(frozen=True)
class Level:
    general_model: str  # what AUTO and ANY run
    person_first: bool  # AUTO tries the person model first and keeps a confident portrait
    matting: bool  # alpha matting in a band around the outline, else the mask upsampled
    clean_edges: bool  # the foreground's colours estimated at the edge (options.clean_edges) always


def level(options: options_pb2.RemoveBackgroundOptions, settings: InferenceSettings) -> Level:
    """The level a request asks for, or the service's default."""
    chosen = options.detail or NAMES[settings.default_detail]
    if chosen == Detail.DETAIL_FAST:
        return Level(settings.general_model, person_first=True, matting=False, clean_edges=False)
    if chosen == Detail.DETAIL_BALANCED:
        return Level(settings.general_model, person_first=False, matting=True, clean_edges=False)
    if chosen == Detail.DETAIL_FINE:
        return Level(settings.fine_model, person_first=False, matting=True, clean_edges=True)
    raise invalid_argument(
        f"detail {options.detail} is not a level; use DETAIL_FAST, DETAIL_BALANCED or DETAIL_FINE",
        field="options.detail",
    )


def bounded_matte(settings: InferenceSettings) -> Callable[[Image.Image, np.ndarray], np.ndarray]:
    """matting.matte within the service's bounds (MATTING_SIDE, _BAND_PX, _MAX_ITERATIONS)."""
    return functools.partial(
        matting.matte,
        side=settings.matting_side,
        band=settings.matting_band_px,
        max_iterations=settings.matting_max_iterations,
    )
