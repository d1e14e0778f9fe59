"""The default segmentation model and the command that fetches it into the model repository.

python -m services.inference.model    # idempotent; verifies the sha256
"""

from __future__ import annotations

from pathlib import Path

from services.common.assets import WheelAsset

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
DEFAULT_MODEL_NAME = "selfie_segmentation"

SELFIE_SEGMENTATION = WheelAsset(
    requirement="mediapipe==0.10.14",
    member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
)


def model_file(repository: Path = MODEL_REPOSITORY) -> Path:
    return repository / DEFAULT_MODEL_NAME / "1" / "selfie_segmentation.tflite"


def fetch_default_model(repository: Path = MODEL_REPOSITORY) -> Path:
    return SELFIE_SEGMENTATION.fetch(model_file(repository))


if __name__ == "__main__":
    print(fetch_default_model())
