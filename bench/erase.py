"""Erase quality where the truth is known: synthetic marks on held-out photos.

    python -m bench.erase      (also run by `make bench`; needs no mesh)

Each photo gets marks of known position, alpha-blended over it: a line of
semi-transparent white text (a typical watermark) and a semi-transparent logo (a
ring and a bar), and, separately, an opaque blob (an object to remove). The mask is
every pixel a mark touched. PSNR (over the marked pixels) and SSIM (over the marks'
bounding box) of the marked photo and of the erased one are measured against the
clean photo; outside the mask the erased photo must equal the marked one exactly.
The photos were never used to set the fill's rule (that was the astronaut).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from services.common.assets import CHELSEA, COFFEE, ROCKET, WheelAsset
from services.inference.inpainting import EraseMethod, erase
from tools.docs import replace_section

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "samples"
RESULTS = ROOT / "bench" / "results"
HELD_OUT: dict[str, WheelAsset] = {"coffee": COFFEE, "chelsea": CHELSEA, "rocket": ROCKET}
MARKS = ("watermark", "blob")


def photo(name: str) -> np.ndarray:
    asset = HELD_OUT[name]
    path = asset.fetch(CACHE / Path(asset.member).name)
    return np.asarray(Image.open(path).convert("RGB"))


def marked(clean: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The photo with a mark of `kind` blended over it at a fixed position, and the mark's mask."""
    height, width = clean.shape[:2]
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if kind == "watermark":
        font = ImageFont.load_default(size=max(16, width // 14))
        draw.text((width // 12, height // 5), "(c) SAMPLE PHOTO", font=font, fill=(255, 255, 255, 150))
        cx, cy, r = width * 3 // 4, height * 2 // 3, max(12, min(width, height) // 10)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255, 130), width=max(3, r // 5))
        draw.rectangle((cx - r // 3, cy - r // 8, cx + r // 3, cy + r // 8), fill=(30, 30, 200, 120))
    elif kind == "blob":
        side = max(16, min(width, height) // 16)
        x, y = width * 2 // 5, height * 3 // 5
        draw.ellipse((x, y, x + side, y + side), fill=(250, 40, 40, 255))
    else:
        raise ValueError(kind)
    mask = np.asarray(overlay)[..., 3] > 0
    out = Image.alpha_composite(Image.fromarray(clean).convert("RGBA"), overlay).convert("RGB")
    return np.asarray(out), mask


@dataclass(frozen=True)
class Score:
    psnr: float  # dB over the marked pixels
    ssim: float  # over the marks' bounding box


def score(clean: np.ndarray, image: np.ndarray, mask: np.ndarray) -> Score:
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return Score(
        psnr=float(peak_signal_noise_ratio(clean[mask], image[mask], data_range=255)),
        ssim=float(structural_similarity(clean[box], image[box], channel_axis=2, data_range=255)),
    )


@dataclass(frozen=True)
class Case:
    photo: str
    mark: str
    marked_pixels: int
    before: Score
    after: Score
    methods: str
    telea_psnr: float  # PSNR after, Telea forced on every region
    patch_psnr: float  # PSNR after, the patch fill forced on every region
    ms: float
    outside_unchanged: bool


def measure(name: str, kind: str) -> Case:
    clean = photo(name)
    image, mask = marked(clean, kind)
    started = time.perf_counter()
    filled, regions = erase(image, mask)
    elapsed = (time.perf_counter() - started) * 1000
    used = sorted({r.method for r in regions})
    # The same marks with one fill forced everywhere: what AUTO's rule chose between.
    alone = {
        method: score(clean, erase(image, mask, method)[0], mask).psnr
        for method in (EraseMethod.ERASE_METHOD_TELEA, EraseMethod.ERASE_METHOD_PATCH)
    }
    return Case(
        photo=name,
        mark=kind,
        marked_pixels=int(mask.sum()),
        before=score(clean, image, mask),
        after=score(clean, filled, mask),
        methods="+".join(EraseMethod.Name(m).removeprefix("ERASE_METHOD_").lower() for m in used),
        telea_psnr=alone[EraseMethod.ERASE_METHOD_TELEA],
        patch_psnr=alone[EraseMethod.ERASE_METHOD_PATCH],
        ms=elapsed,
        outside_unchanged=bool(np.array_equal(filled[~mask], image[~mask])),
    )


def table(cases: list[Case]) -> str:
    lines = [
        "| photo | mark | marked px | PSNR before → after (dB) | SSIM before → after | fill (AUTO) "
        "| PSNR all-Telea / all-patch | time (ms) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for c in cases:
        lines.append(
            f"| {c.photo} | {c.mark} | {c.marked_pixels} | {c.before.psnr:.1f} → {c.after.psnr:.1f} "
            f"| {c.before.ssim:.3f} → {c.after.ssim:.3f} | {c.methods} | {c.telea_psnr:.1f} / {c.patch_psnr:.1f} "
            f"| {c.ms:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-page", "--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    cases = [measure(name, kind) for name in HELD_OUT for kind in MARKS]
    text_table = table(cases)
    print(text_table)
    if not all(c.outside_unchanged for c in cases):
        print("FAILED: pixels outside a mask changed")
        return 1
    if not args.no_page:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "erase.md").write_text(text_table)
        replace_section("erase-bench", text_table)  # docs/api/erasing.md
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
