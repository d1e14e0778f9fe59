"""What the harnesses share: the outcome every input must have and a stand-in model."""

from __future__ import annotations

import grpc
import numpy as np
from PIL import Image

from services.common.errors import ServiceError


class TinyProfile:
    """The model's input side without a model: the picture at 32x32, as float32 in [0, 1]."""

    def tensor(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((32, 32)), np.float32) / 255


def probability(seed: int) -> np.ndarray:
    """A mask as a model gives one: a 32x32 probability with a subject somewhere (or none)."""
    mask = np.zeros((32, 32), np.float32)
    if seed % 4:
        top, left = seed % 16, (seed // 16) % 16
        mask[top : top + 12, left : left + 12] = 1.0
    return mask


def refused_properly(error: ServiceError, fields: tuple[str, ...]) -> None:
    """A refusal must be INVALID_ARGUMENT naming one of `fields` (a prefix), with a message."""
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (error.code, error.message)
    assert error.field and error.field.startswith(fields), (error.field, error.message)
    assert error.message
