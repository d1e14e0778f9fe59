"""The colour + alpha pair against the RGBA PNG, on the render path alone (no model, no mesh).

    python -m bench.pair [--repeats 5]

Times `imaging.render` (compositing and encoding, what the two formats differ in) on the
astronaut photo scaled to 1 MP and 12 MP, with the real matte of the default model, and
gives the bytes of each. The full mesh comparison is the "pair" rows of `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image

from bench.floor import PersonModel
from bench.run import SIZES
from cutout.v1 import options_pb2
from services.common import output_spec
from services.common.assets import ASTRONAUT
from services.inference import imaging, matting
from services.inference.model import fetch_models
from services.inference.settings import InferenceSettings
from services.launcher import ROOT

CASES = {"png": options_pb2.OUTPUT_FORMAT_PNG, "pair": options_pb2.OUTPUT_FORMAT_COLOR_ALPHA_PAIR}


def matte(image: Image.Image) -> Image.Image:
    return Image.fromarray(matting.upsample(PersonModel().probability(image), image.size), "L")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fetch_models()
    settings = InferenceSettings()
    encoders = output_spec.EncoderDefaults(settings.compression_effort, settings.jpeg_quality, settings.webp_quality)
    photo = Image.open(ASTRONAUT.fetch(ROOT / ".data" / "samples" / "astronaut.png")).convert("RGB")
    for size, dims in SIZES.items():
        image = photo.resize(dims, Image.Resampling.LANCZOS)
        alpha = matte(image)
        for name, fmt in CASES.items():
            spec = output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(format=fmt), encoders)
            times, rendered = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                rendered = imaging.render(image.copy(), alpha, spec)
                times.append((time.perf_counter() - started) * 1000)
            assert rendered is not None
            total = len(rendered.data) + len(rendered.alpha_data)
            print(
                f"{size} {name}: render median {statistics.median(times):.0f} ms (min {min(times):.0f}), "
                f"{total / 1e6:.2f} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
