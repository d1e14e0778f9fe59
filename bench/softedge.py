"""The soft-edge evaluation set: subjects with fine, semi-transparent outlines, their exact
alpha, placed on backgrounds they were not photographed on.

Sources (every one public domain or CC0, from published wheels, sha256-pinned in
services/common/assets.py):

| subject | what | source, licence |
| --- | --- | --- |
| astronaut | portrait, short hair, a helmet | scikit-image `astronaut.png`, NASA, public domain |
| hopper | portrait, hair, a cap | matplotlib `grace_hopper.jpg`, U.S. Navy, public domain |
| chelsea | a cat: fur, whiskers | scikit-image `chelsea.png`, CC0 (Stéfan van der Walt) |
| coffee | a cup on a saucer, a spoon | scikit-image `coffee.png`, CC0 (Rachel Michetti) |

Backgrounds: scikit-image's brick, grass and gravel textures (CC0Textures, CC0), tinted;
and three made here: noise of the subject's own mean colour, a colour gradient with
noise, a checkerboard.

The truth. No public-domain photo with a measured alpha matte is on the package
registries, so each subject's alpha is the output of the strongest model at hand,
IS-Net (the opt-in quality tier; its weights are AGPL-3.0), on the original photo,
stored as 8-bit PNG in bench/softedge/ by `python -m bench.softedge --build-truth`
(which needs `python -m services.inference.model --opt-in isnet` first). The subject's
foreground colours are estimated from the photo and that alpha (pymatting's
multilevel foreground estimation), and each composite is exactly
`foreground * alpha + background * (1 - alpha)`: its truth is the alpha placed, exactly.
IS-Net itself is therefore never scored on this set. Two photos were left out because
IS-Net's alpha of them is not a truth a person would accept: the rocket (it takes in the
launch towers and the lens flares) and the cameraman (it drops his camera and half his face).
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from pymatting import estimate_foreground_ml

from services.common.assets import ASTRONAUT, BRICK, CHELSEA, COFFEE, GRASS, GRAVEL, HOPPER, WheelAsset
from services.launcher import ROOT

TRUTH = Path(__file__).resolve().parent / "softedge"
SUBJECTS: dict[str, tuple[WheelAsset, str]] = {
    "astronaut": (ASTRONAUT, "portrait"),
    "hopper": (HOPPER, "portrait"),
    "chelsea": (CHELSEA, "animal"),
    "coffee": (COFFEE, "product"),
}
TEXTURES = {"brick": (BRICK, (1.0, 0.75, 0.6)), "grass": (GRASS, (0.6, 0.9, 0.5)), "gravel": (GRAVEL, (0.9, 0.9, 0.85))}
BACKGROUNDS = (*TEXTURES, "similar", "gradient", "checker")


@dataclass(frozen=True)
class Composite:
    name: str  # "subject on background"
    category: str  # portrait, animal, product
    photo: bytes  # PNG
    truth: np.ndarray  # float32 alpha in [0, 1]
    foreground: np.ndarray  # float32 RGB in [0, 1]: the subject's colours where truth > 0


def photo_of(subject: str, folder: Path) -> Image.Image:
    asset = SUBJECTS[subject][0]
    return Image.open(asset.fetch(folder / Path(asset.member).name)).convert("RGB")


def _background(name: str, size: tuple[int, int], colour: np.ndarray, folder: Path, seed: int) -> np.ndarray:
    """A background as float RGB in [0, 1], height x width x 3."""
    width, height = size
    rng = np.random.default_rng(seed)
    if name in TEXTURES:
        asset, tint = TEXTURES[name]
        grey = ImageOps.fit(Image.open(asset.fetch(folder / Path(asset.member).name)).convert("L"), size)
        return np.stack([np.asarray(grey, np.float32) / 255 * t for t in tint], axis=-1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if name == "similar":  # the subject's own mean colour, with fine noise: low contrast everywhere
        noise = colour + rng.normal(0, 0.06, (height, width, 3))
        blurred = Image.fromarray((np.clip(noise, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
        return np.asarray(blurred, np.float32) / 255
    if name == "gradient":
        ramp = np.stack([xx / width, 0.3 + 0.4 * yy / height, 1 - xx / width], axis=-1)
        return np.clip(ramp + rng.normal(0, 0.04, (height, width, 3)), 0, 1)
    if name == "checker":
        squares = (((xx // 24) + (yy // 24)) % 2)[..., None]
        return squares * np.array([0.85, 0.85, 0.8], np.float32) + 0.1
    raise ValueError(name)


def composites(folder: Path = ROOT / ".cache" / "samples") -> list[Composite]:
    """Every subject on every background, with its exact alpha."""
    result = []
    for index, (subject, (_, category)) in enumerate(SUBJECTS.items()):
        image = photo_of(subject, folder)
        alpha = np.asarray(Image.open(TRUTH / f"{subject}.png").convert("L"), np.float64) / 255
        if alpha.shape != (image.height, image.width):
            raise ValueError(f"bench/softedge/{subject}.png does not match the photo's size")
        foreground = estimate_foreground_ml(np.asarray(image, np.float64) / 255, alpha)
        colour = (foreground * alpha[..., None]).sum((0, 1)) / max(alpha.sum(), 1.0)
        for b, background_name in enumerate(BACKGROUNDS):
            background = _background(background_name, image.size, colour, folder, seed=100 * index + b)
            mixed = foreground * alpha[..., None] + background * (1 - alpha[..., None])
            out = io.BytesIO()
            Image.fromarray((np.clip(mixed, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out, "PNG")
            result.append(
                Composite(
                    f"{subject} on {background_name}",
                    category,
                    out.getvalue(),
                    alpha.astype(np.float32),
                    foreground.astype(np.float32),
                )
            )
    return result


def build_truth(folder: Path = ROOT / ".cache" / "samples") -> None:
    """Writes bench/softedge/<subject>.png: IS-Net's alpha of each photo (needs the opt-in)."""
    import onnxruntime as ort

    from services.inference.model import ISNET
    from services.inference.profiles import ModelProfile, load_config

    model = ISNET.file.path()
    if not model.exists():
        raise SystemExit("IS-Net is not installed: python -m services.inference.model --opt-in isnet")
    profile = ModelProfile.from_config(load_config(model.parents[1] / "config.pbtxt"))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    TRUTH.mkdir(exist_ok=True)
    for subject in SUBJECTS:
        image = photo_of(subject, folder)
        (output,) = session.run([profile.output_name], {profile.input_name: profile.tensor(image)[None]})
        probability = profile.probability(output[0])
        alpha = Image.fromarray(np.clip(probability, 0, 1).astype(np.float32), "F").resize(
            image.size, Image.Resampling.BILINEAR
        )
        Image.fromarray((np.clip(np.asarray(alpha), 0, 1) * 255 + 0.5).astype(np.uint8), "L").save(
            TRUTH / f"{subject}.png", optimize=True
        )
        print(f"bench/softedge/{subject}.png", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-truth", action="store_true", help="rewrite the truth alphas with IS-Net")
    args = parser.parse_args()
    if args.build_truth:
        build_truth()
    for composite in composites():
        print(composite.name, composite.category, f"{(composite.truth >= 0.5).mean():.2f} of the frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
