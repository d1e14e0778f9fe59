"""Mask quality on a set with known truth, and the models' cost, through the running mesh.

The evaluation set is built here from scikit-image's public-domain sample images, so
its truth is exact: two subjects whose alpha is known (the scikit-image logo, an RGBA
graphic with its own alpha; a horse silhouette, its alpha the drawing's darkness,
filled with the coffee photo's colours) composited onto four photographed textures
(brick, gravel, grass, a printed page). It has no people: no public-domain portrait
with an exact alpha could be had from the package registries, so the person model is
measured against itself run directly instead (tests/mesh/test_end_to_end.py, IoU >= 0.97).

Each mask is scored with pysodmetrics (the salient-object metrics of the field):
S-measure (structure, higher is better), MAE (lower) and weighted F (higher).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import py_sod_metrics
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageOps

from bench.load import funded_mesh, unary_load
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.assets import ASTRONAUT, BRICK, COFFEE, GRASS, GRAVEL, HOPPER, HORSE, LOGO, PAGE, WheelAsset
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA
from services.common.tls import channel_credentials
from services.inference.model import (
    GENERAL_MODEL,
    MODEL_REPOSITORY,
    PERSON_MODEL,
    SELFIE_SEGMENTATION,
    U2NETP,
    fetch_models,
)
from services.inference.profiles import ModelProfile, load_config
from services.inference.settings import InferenceSettings
from services.inference.triton_local import LocalTriton, model_counts
from services.launcher import ROOT, Mesh

CANVAS = (640, 480)
BACKGROUND_TINTS = {"brick": (1.0, 0.75, 0.6), "gravel": (0.9, 0.9, 0.85), "grass": (0.6, 0.9, 0.5), "page": (1, 1, 1)}
SUBJECTS = {"auto": options_pb2.SUBJECT_AUTO, "person": options_pb2.SUBJECT_PERSON, "any": options_pb2.SUBJECT_ANY}


@dataclass(frozen=True)
class Sample:
    name: str
    photo: bytes  # PNG
    truth: np.ndarray  # uint8 alpha, 0-255


def _image(asset: WheelAsset, folder: Path) -> Image.Image:
    return Image.open(asset.fetch(folder / Path(asset.member).name))


def _subjects(folder: Path) -> dict[str, Image.Image]:
    """RGBA subjects with exact alpha."""
    logo = _image(LOGO, folder).convert("RGBA")
    horse = _image(HORSE, folder).convert("L")
    colours = ImageOps.fit(_image(COFFEE, folder).convert("RGB"), horse.size)
    filled = colours.convert("RGBA")
    filled.putalpha(ImageOps.invert(horse))  # black drawing on white: darkness is coverage
    return {"logo": logo, "horse": filled}


def evaluation_set(folder: Path) -> list[Sample]:
    textures = {"brick": BRICK, "gravel": GRAVEL, "grass": GRASS, "page": PAGE}
    samples = []
    for subject_name, subject in _subjects(folder).items():
        for index, (texture_name, asset) in enumerate(textures.items()):
            grey = ImageOps.fit(_image(asset, folder).convert("L"), CANVAS)
            tint = BACKGROUND_TINTS[texture_name]
            canvas = Image.merge("RGB", [grey.point(lambda v, t=t: round(v * t)) for t in tint]).convert("RGBA")
            scale = 0.7 * min(CANVAS[0] / subject.width, CANVAS[1] / subject.height)
            placed = subject.resize((round(subject.width * scale), round(subject.height * scale)), Image.LANCZOS)
            offset = ((CANVAS[0] - placed.width) // 2 + (index - 1.5) * 40, (CANVAS[1] - placed.height) // 2)
            offset = (round(offset[0]), round(offset[1]))
            layer = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
            layer.paste(placed, offset)
            canvas.alpha_composite(layer)
            out = io.BytesIO()
            canvas.convert("RGB").save(out, "PNG")
            samples.append(
                Sample(f"{subject_name} on {texture_name}", out.getvalue(), np.asarray(layer)[..., 3].copy())
            )
    return samples


@dataclass
class Scores:
    s_measure: float
    mae: float
    weighted_f: float


def score(masks: list[np.ndarray], truths: list[np.ndarray]) -> Scores:
    s_measure, mae, weighted_f = py_sod_metrics.Smeasure(), py_sod_metrics.MAE(), py_sod_metrics.WeightedFmeasure()
    for mask, truth in zip(masks, truths, strict=True):
        for metric in (s_measure, mae, weighted_f):
            metric.step(pred=mask, gt=truth)
    return Scores(
        float(s_measure.get_results()["sm"]),
        float(mae.get_results()["mae"]),
        float(weighted_f.get_results()["wfm"]),
    )


def _stub(channel: grpc.Channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(channel)


def measure_quality(gateway: str, ca_file: Path, api_key: str, samples: list[Sample]) -> dict[str, dict[str, object]]:
    """Per subject option: the scores over the set and which model AUTO chose for each sample."""
    report: dict[str, dict[str, object]] = {}
    with grpc.secure_channel(gateway, channel_credentials(ca_file), options=channel_options()) as channel:
        for label, subject in SUBJECTS.items():
            masks, models = [], []
            for sample in samples:
                options = options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_MASK, subject=subject)
                response = _stub(channel).RemoveBackground(
                    cutout_pb2.RemoveBackgroundRequest(image=sample.photo, options=options),
                    metadata=[(API_KEY_METADATA, api_key)],
                    timeout=300,
                )
                masks.append(np.asarray(Image.open(io.BytesIO(response.result.image)).convert("L")))
                models.append(response.result.model)
            report[label] = {"scores": score(masks, [s.truth for s in samples]).__dict__, "models": models}
    return report


# --- cost: each model through the mesh, against the same model in-process ---


@dataclass
class ModelSpeed:
    model: str
    images_per_s: float  # through the mesh, `concurrency` calls at a time
    p50_ms: float
    mean_batch: float  # Triton's own inference / execution counts
    in_process_images_per_s: float  # the model alone in this process, same threads as Triton's config
    ratio: float


def _in_process(model: str, threads: int, images: int = 16, batch: int = 8) -> float:
    """Images/s of the model alone, in batches, on `threads` threads: no decode, no gRPC."""
    profile = ModelProfile.from_config(load_config(MODEL_REPOSITORY / model / "config.pbtxt"))
    tensor = np.stack([profile.tensor(Image.new("RGB", (512, 512), (120, 90, 60)))] * batch)
    if model == GENERAL_MODEL:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(U2NETP.path()), options, providers=["CPUExecutionProvider"])

        def run() -> None:
            session.run([profile.output_name], {profile.input_name: tensor})
    else:
        interpreter = Interpreter(model_path=str(SELFIE_SEGMENTATION.path()), num_threads=threads)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(tensor.shape))
        interpreter.allocate_tensors()

        def run() -> None:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
            interpreter.invoke()

    run()  # warm-up
    started = time.perf_counter()
    for _ in range(max(1, images // batch)):
        run()
    return max(1, images // batch) * batch / (time.perf_counter() - started)


async def _drive(
    gateway: str, ca_file: Path, api_key: str, photo: bytes, subject: int, concurrency: int, requests: int
) -> list[float]:
    # The fast level: PERSON and ANY reach the person model and U²-Net-p, the models compared in-process.
    options = options_pb2.RemoveBackgroundOptions(
        format=options_pb2.OUTPUT_FORMAT_MASK, subject=subject, detail=options_pb2.DETAIL_FAST
    )
    request = cutout_pb2.RemoveBackgroundRequest(image=photo, options=options)
    return await unary_load(gateway, ca_file, api_key, request, concurrency, requests)


def measure_speed(
    gateway: str, ca_file: Path, triton: LocalTriton, api_key: str, photo: bytes, quick: bool
) -> list[ModelSpeed]:
    speeds = []
    for model, subject, requests in (
        (PERSON_MODEL, options_pb2.SUBJECT_PERSON, 64),
        (GENERAL_MODEL, options_pb2.SUBJECT_ANY, 16 if quick else 32),
    ):
        config = load_config(MODEL_REPOSITORY / model / "config.pbtxt")
        params = {key: value.string_value for key, value in config.parameters.items()}
        threads = int(params.get("num_threads") or params.get("intra_op_thread_count") or 1)
        asyncio.run(_drive(gateway, ca_file, api_key, photo, subject, 4, 4))  # warm-up
        inferences, executions = model_counts(triton, model)
        started = time.perf_counter()
        latencies = asyncio.run(_drive(gateway, ca_file, api_key, photo, subject, 16, requests))
        elapsed = time.perf_counter() - started
        inferences_after, executions_after = model_counts(triton, model)
        alone = _in_process(model, threads)
        speeds.append(
            ModelSpeed(
                model=model,
                images_per_s=requests / elapsed,
                p50_ms=statistics.median(latencies),
                mean_batch=(inferences_after - inferences) / max(1, executions_after - executions),
                in_process_images_per_s=alone,
                ratio=requests / elapsed / alone,
            )
        )
    return speeds


def markdown(quality: dict[str, dict[str, object]], speeds: list[ModelSpeed], samples: list[Sample]) -> str:
    lines = [
        f"Mask quality on {len(samples)} composites with exact alpha (`bench/quality.py`; higher S-measure and "
        "weighted F and lower MAE are better), by the `subject` option:",
        "",
        "| subject | S-measure | MAE | weighted F | models used |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, entry in quality.items():
        scores = entry["scores"]
        models = entry["models"]
        used = ", ".join(f"{name} x{models.count(name)}" for name in sorted(set(models)))  # type: ignore[arg-type]
        lines.append(
            f"| {label} | {scores['s_measure']:.3f} | {scores['mae']:.3f} | {scores['weighted_f']:.3f} | {used} |"  # type: ignore[index]
        )
    lines += [
        "",
        "Cost per model through the mesh (512x512 photo, mask output, 16 calls at a time) against the same model "
        "in-process (batches of 8, the threads its Triton config gives it):",
        "",
        "| model | mesh img/s | p50 ms | Triton batch | in-process img/s | mesh / in-process |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {s.model} | {s.images_per_s:.1f} | {s.p50_ms:.0f} | {s.mean_batch:.1f} | {s.in_process_images_per_s:.1f} "
        f"| {s.ratio:.2f} |"
        for s in speeds
    ]
    return "\n".join(lines) + "\n"


def run(mesh: Mesh, api_key: str, quick: bool) -> tuple[dict[str, object], str]:
    """Quality and cost on a running mesh: (the JSON payload, the Markdown table)."""
    assert mesh.triton is not None
    samples = evaluation_set(mesh.data_dir / "samples")
    quality = measure_quality(mesh.gateway.address, mesh.ca_file, api_key, samples)
    photo = ASTRONAUT.fetch(mesh.data_dir / "samples" / "astronaut.png").read_bytes()
    speeds = measure_speed(mesh.gateway.address, mesh.ca_file, mesh.triton, api_key, photo, quick)
    for speed in speeds:
        print(
            f"model {speed.model}: {speed.images_per_s:.1f} img/s through the mesh, batch {speed.mean_batch:.1f}, "
            f"{speed.in_process_images_per_s:.1f} img/s in-process ({speed.ratio:.2f}x)",
            flush=True,
        )
    payload = {"samples": [s.name for s in samples], "quality": quality, "speed": [s.__dict__ for s in speeds]}
    return payload, markdown(quality, speeds, samples)


def _one_megapixel(asset: WheelAsset, folder: Path) -> bytes:
    """A photo resampled to about 1 MP and saved as a camera would (JPEG q90)."""
    image = _image(asset, folder).convert("RGB")
    factor = (1_000_000 / (image.width * image.height)) ** 0.5
    out = io.BytesIO()
    image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()


def main() -> int:
    """python -m bench.quality: the soft-edge evaluation (bench/edge_quality.py), the hard-edged
    set as a regression check, and each level's cost, on a mesh of its own with the service's
    defaults. Writes bench/results/quality-<time>.json and .md, the contact sheet and the plot
    under docs/images/quality/, and the tables of docs/models/quality.md."""
    from bench import edge_quality, softedge
    from bench.run import RESULTS, ProcessWatch, update_docs

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=6, help="requests per level and photo for the cost")
    args = parser.parse_args()
    fetch_models()
    data_dir = ROOT / ".data" / "bench-quality"
    samples = softedge.composites(data_dir / "samples")
    with funded_mesh(data_dir, 5000) as (mesh, api_key):
        gateway, ca_file = mesh.gateway.address, mesh.ca_file
        levels, cutouts = edge_quality.levels(gateway, ca_file, api_key, samples)
        hard_set = evaluation_set(data_dir / "samples")
        regression = measure_quality(gateway, ca_file, api_key, hard_set)
        photos = {
            "portrait": _one_megapixel(HOPPER, data_dir / "samples"),
            "product": _one_megapixel(COFFEE, data_dir / "samples"),
        }
        costs = edge_quality.cost(gateway, ca_file, api_key, photos, ProcessWatch(mesh), args.repeats)
    steps = edge_quality.steps(samples, InferenceSettings())
    shown = edge_quality.sheet_indices(samples)
    edge_quality.contact_sheet(
        [samples[i] for i in shown],
        {label: [images[i] for i in shown] for label, images in cutouts.items()},
        edge_quality.IMAGES / "contact-sheet.png",
    )
    edge_quality.plot(levels, steps, costs, samples, edge_quality.IMAGES / "quality-vs-cost.png")
    table = edge_quality.markdown(levels, steps, costs, samples)
    table += "\n" + markdown(regression, [], hard_set).split("\n\nCost per model")[0] + "\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {
        "samples": [s.name for s in samples],
        "levels": {row.label: {"total": row.total(), "per_image": [x.as_dict() for x in row.scores]} for row in levels},
        "steps": {row.label: {"total": row.total(), "per_image": [x.as_dict() for x in row.scores]} for row in steps},
        "cost": costs,
        "hard_edged_set": regression,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"quality-{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"quality-{stamp}.md").write_text(table)
    update_docs(table, "quality")
    print("\n" + table)
    print(f"saved bench/results/quality-{stamp}.json and .md; the pictures in {edge_quality.IMAGES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
