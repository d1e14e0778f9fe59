"""Edges that look right: every model and refinement step scored on the soft-edge set
(bench/softedge.py), the detail levels through the running mesh with their cost, a
contact sheet and a quality-against-cost plot. Part of `python -m bench.quality`.

Two kinds of rows:

- **steps, in-process**: each model's mask turned into an alpha in each way
  (services/inference/matting.py; the guided filter it replaced, bench/guided_filter.py;
  and the candidates that were tried and are not served: test-time flips, fusing the
  person model's confidence with U²-Net-p's outline), so each step's effect is measured
  on its own, with its CPU time;
- **levels, through the mesh**: what a caller gets with `detail` FAST, BALANCED and FINE
  (AUTO subject, mask output), and the CPU the mesh spends per 1 MP portrait and product.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import matplotlib
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from bench.floor import PersonModel
from bench.guided_filter import guided_filter
from bench.matte_scores import MatteScores, edge_band, score, summary
from bench.run import CLIENT
from bench.softedge import Composite
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA
from services.common.tls import channel_credentials
from services.inference import detail, matting
from services.inference.model import FINE_MODEL, GENERAL_MODEL, MODEL_REPOSITORY, PERSON_MODEL, U2NET, U2NETP
from services.inference.profiles import ModelProfile, load_config
from services.inference.settings import InferenceSettings

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LEVELS = {
    "fast": options_pb2.DETAIL_FAST,
    "balanced": options_pb2.DETAIL_BALANCED,
    "fine": options_pb2.DETAIL_FINE,
}
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images" / "quality"


class OnnxModel:
    """A U²-Net model in this process, fed and read as its Triton profile says."""

    def __init__(self, name: str, path: Path) -> None:
        self.profile = ModelProfile.from_config(load_config(MODEL_REPOSITORY / name / "config.pbtxt"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probability(self, image: Image.Image) -> np.ndarray:
        (output,) = self.session.run(
            [self.profile.output_name], {self.profile.input_name: self.profile.tensor(image)[None]}
        )
        return self.profile.probability(output[0])


@dataclass
class Row:
    """One way of cutting out, scored on every composite."""

    label: str
    scores: list[MatteScores] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # per image, of the step measured
    colour_error: list[float] = field(default_factory=list)  # through the mesh, PNG output

    def total(self) -> dict[str, float]:
        result = summary(self.scores)
        result["cpu_ms"] = statistics.median(self.cpu_ms) if self.cpu_ms else 0.0
        if self.colour_error:
            result["colour_error"] = float(np.mean(self.colour_error))
        return result


def _timed(function: Callable[..., np.ndarray], *args: object) -> tuple[np.ndarray, float]:
    """The function's result and the CPU ms it took."""
    started = time.process_time()
    result = function(*args)
    return result, (time.process_time() - started) * 1000


def _as_float(alpha: np.ndarray) -> np.ndarray:
    return alpha.astype(np.float32) / 255


def steps(samples: list[Composite], settings: InferenceSettings) -> list[Row]:
    """Each model and each step from its mask to the alpha, in this process."""
    models: dict[str, Callable[[Image.Image], np.ndarray]] = {
        PERSON_MODEL: PersonModel(threads=2).probability,
        GENERAL_MODEL: OnnxModel(GENERAL_MODEL, U2NETP.path()).probability,
        FINE_MODEL: OnnxModel(FINE_MODEL, U2NET.path()).probability,
    }

    matte = detail.bounded_matte(settings)

    rows: dict[str, Row] = {}

    def add(label: str, alpha: np.ndarray, cpu_ms: float, truth: np.ndarray) -> None:
        row = rows.setdefault(label, Row(label))
        row.scores.append(score(_as_float(alpha), truth))
        row.cpu_ms.append(cpu_ms)

    for sample in samples:
        image = Image.open(io.BytesIO(sample.photo)).convert("RGB")
        masks, model_cpu = {}, {}
        for name, model in models.items():
            masks[name], model_ms = _timed(model, image)
            model_cpu[name] = model_ms
            alpha, ms = _timed(matting.upsample, masks[name], image.size)
            add(f"{name}, mask upsampled", alpha, model_ms + ms, sample.truth)
            alpha, ms = _timed(guided_filter, image, masks[name])
            add(f"{name} + guided filter (removed)", alpha, model_ms + ms, sample.truth)
            alpha, ms = _timed(matte, image, masks[name])
            add(f"{name} + matting", alpha, model_ms + ms, sample.truth)
            if name == GENERAL_MODEL:
                flipped, flip_ms = _timed(model, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
                alpha, ms = _timed(matte, image, (masks[name] + flipped[:, ::-1]) / 2)
                add(f"{name} + flip + matting (not served)", alpha, model_ms + flip_ms + ms, sample.truth)
        # Fusion: U²-Net-p's outline, kept only where the person model (dilated) sees its subject.
        person = cv2.dilate((masks[PERSON_MODEL] >= 0.5).astype(np.uint8), np.ones((9, 9), np.uint8))
        near = cv2.resize(person, masks[GENERAL_MODEL].shape[::-1], interpolation=cv2.INTER_NEAREST)
        alpha, ms = _timed(matte, image, masks[GENERAL_MODEL] * near)
        both_ms = model_cpu[GENERAL_MODEL] + model_cpu[PERSON_MODEL]
        add(f"{GENERAL_MODEL} x {PERSON_MODEL} + matting (not served)", alpha, both_ms + ms, sample.truth)
    return list(rows.values())


def _remove(stub: cutout_pb2_grpc.CutoutStub, api_key: str, photo: bytes, **options: object) -> cutout_pb2.CutoutImage:
    request = cutout_pb2.RemoveBackgroundRequest(image=photo, options=options_pb2.RemoveBackgroundOptions(**options))
    return stub.RemoveBackground(request, metadata=[(API_KEY_METADATA, api_key)], timeout=600).result


def colour_error(rgba: np.ndarray, sample: Composite) -> float:
    """Mean error of the premultiplied colour within the edge band: old background left on hair."""
    band = edge_band(sample.truth)
    got = rgba[..., :3].astype(np.float32) / 255 * (rgba[..., 3:4].astype(np.float32) / 255)
    want = sample.foreground * sample.truth[..., None]
    return float(np.abs(got - want)[band].mean())


def levels(gateway: str, ca_file: Path, api_key: str, samples: list[Composite]) -> tuple[list[Row], dict[str, list]]:
    """The detail levels through the mesh; also each level's cut-outs, for the contact sheet."""
    rows, cutouts = [], {}
    with grpc.secure_channel(gateway, channel_credentials(ca_file), options=channel_options()) as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)
        for label, level in LEVELS.items():
            for clean in (False, True) if label == "fast" else (False,):
                row = Row(f"detail {label}" + (" + clean_edges" if clean else ""))
                images = []
                for sample in samples:
                    result = _remove(stub, api_key, sample.photo, detail=level, clean_edges=clean)
                    rgba = np.asarray(Image.open(io.BytesIO(result.image)).convert("RGBA"))
                    row.scores.append(score(_as_float(rgba[..., 3]), sample.truth))
                    row.colour_error.append(colour_error(rgba, sample))
                    images.append(rgba)
                rows.append(row)
                cutouts[row.label] = images
    return rows, cutouts


def cost(gateway: str, ca_file: Path, api_key: str, photos: dict[str, bytes], watch, repeats: int) -> dict[str, dict]:
    """CPU ms per picture of all the mesh's processes, and wall p50, one request at a time."""
    result: dict[str, dict] = {}
    with grpc.secure_channel(gateway, channel_credentials(ca_file), options=channel_options()) as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)
        for label, level in LEVELS.items():
            for kind, photo in photos.items():
                _remove(stub, api_key, photo, detail=level)  # warm-up
                walls = []
                watch.start()
                for _ in range(repeats):
                    started = time.perf_counter()
                    _remove(stub, api_key, photo, detail=level)
                    walls.append((time.perf_counter() - started) * 1000)
                cpu, _ = watch.stop()
                mesh_cpu = sum(seconds for role, seconds in cpu.items() if role != CLIENT)
                result[f"{label} {kind}"] = {
                    "cpu_ms_per_image": mesh_cpu * 1000 / repeats,
                    "p50_ms": statistics.median(walls),
                    "by_process_ms": {role: s * 1000 / repeats for role, s in cpu.items()},
                }
                print(f"cost {label} {kind}: {mesh_cpu * 1000 / repeats:.0f} ms CPU per image", flush=True)
    return result


# --- pictures ---


def _checker(size: tuple[int, int], square: int = 12) -> Image.Image:
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    light = (((xx // square) + (yy // square)) % 2).astype(np.uint8)
    return Image.fromarray(np.where(light[..., None], 205, 150).repeat(3, axis=2).astype(np.uint8))


def _over(rgba: np.ndarray, backdrop: Image.Image) -> Image.Image:
    layer = Image.fromarray(rgba, "RGBA")
    base = backdrop.convert("RGBA")
    base.alpha_composite(layer)
    return base.convert("RGB")


def contact_sheet(
    samples: list[Composite], cutouts: dict[str, list[np.ndarray]], path: Path, height: int = 200
) -> None:
    """Per sample, two rows (over a checkerboard, over a dark grey): the composite, the truth
    placed, and each level's cut-out, each tile with its edge error."""
    labels = list(cutouts)
    columns = ["composite", "truth", *labels]
    tiles: list[list[Image.Image]] = []
    for index, sample in enumerate(samples):
        photo = Image.open(io.BytesIO(sample.photo)).convert("RGB")
        truth_rgba = np.dstack(
            [(sample.foreground * 255 + 0.5).astype(np.uint8), (sample.truth * 255 + 0.5).astype(np.uint8)]
        )
        width = round(photo.width * height / photo.height)
        for backdrop in (_checker(photo.size), Image.new("RGB", photo.size, (28, 28, 32))):
            row = [photo.resize((width, height))]
            for rgba, label in [(truth_rgba, "truth"), *((cutouts[label][index], label) for label in labels)]:
                tile = _over(rgba, backdrop).resize((width, height), Image.Resampling.LANCZOS)
                if label != "truth":
                    edge = score(_as_float(rgba[..., 3]), sample.truth).edge
                    ImageDraw.Draw(tile).text((4, height - 14), f"edge {edge:.3f}", fill=(255, 255, 0))
                row.append(tile)
            tiles.append(row)
    widths = [max(row[c].width for row in tiles) for c in range(len(columns))]
    header = 18
    sheet = Image.new("RGB", (sum(widths), header + height * len(tiles) + 2 * len(samples)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((sum(widths[:c]) + 4, 3), name, fill=(0, 0, 0))
    y = header
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (sum(widths[:c]), y))
        y += height + (2 if r % 2 else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def plot(
    levels_rows: list[Row], steps_rows: list[Row], costs: dict[str, dict], samples: list[Composite], path: Path
) -> None:
    """Edge error against CPU, for portraits and for the whole set: the steps in-process (grey,
    CPU per picture of 0.1 to 0.3 MP) and the levels through the mesh (blue, CPU per 1 MP picture)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110, sharex=True)
    for axis, category in zip(axes, ("portrait", None), strict=True):
        chosen = [i for i, sample in enumerate(samples) if category in (None, sample.category)]

        def edge(row: Row, chosen: list[int] = chosen) -> float:
            return float(np.mean([row.scores[i].edge for i in chosen]))

        for row in steps_rows:
            x, y = row.total()["cpu_ms"], edge(row)
            axis.scatter(x, y, color="0.55", s=16)
            axis.annotate(row.label, (x, y), fontsize=6, color="0.35", xytext=(3, 2), textcoords="offset points")
        for row in levels_rows:
            name = row.label.removeprefix("detail ")
            if f"{name} portrait" not in costs:
                continue
            x, y = costs[f"{name} portrait"]["cpu_ms_per_image"], edge(row)
            axis.scatter(x, y, color="tab:blue", s=40)
            axis.annotate(row.label, (x, y), fontsize=8, color="tab:blue", xytext=(4, -10), textcoords="offset points")
        axis.set_xscale("log")
        axis.set_xlabel("CPU ms per picture (log)")
        axis.set_title(f"{category + 's' if category else 'all subjects'}: edge error against cost", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean alpha error within 6 px of the edge")
    figure.suptitle(
        "Soft-edge set, lower left is better: grey = a step in-process, blue = a level through the mesh (1 MP)",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(levels_rows: list[Row], steps_rows: list[Row], costs: dict[str, dict], samples: list[Composite]) -> str:
    subjects = len({s.name.split(" on ")[0] for s in samples})
    lines = [
        f"Soft-edge set: {len(samples)} composites ({subjects} subjects on {len(samples) // subjects} backgrounds, "
        "bench/softedge.py). Edge: mean alpha error within 6 px of the true outline; ghost: far background kept "
        "at alpha >= 0.05; worst: the worst image; colour: premultiplied colour error within 6 px of the outline.",
        "",
    ]
    header = [
        "through the mesh, AUTO",
        "edge",
        "worst edge",
        "worst IoU",
        "worst ghost",
        "MAE",
        "S",
        "E",
        "wF",
        "colour",
    ]
    cells = []
    for row in levels_rows:
        t = row.total()
        cells.append(
            [
                row.label,
                *(f"{t[k]:.3f}" for k in ("edge", "worst_edge", "worst_iou")),
                f"{100 * t['worst_ghost']:.2f} %",
            ]
            + [f"{t[k]:.3f}" for k in ("mae", "s_measure", "e_measure", "weighted_f", "colour_error")]
        )
    lines += _table(header, cells)
    categories = sorted({s.category for s in samples})
    cells = []
    for row in levels_rows:
        for category in categories:
            mine = [s for s, c in zip(row.scores, samples, strict=True) if c.category == category]
            edges, worst_iou, worst_ghost = [s.edge for s in mine], min(s.iou for s in mine), max(s.ghost for s in mine)
            figures = [f"{np.mean(edges):.3f}", f"{max(edges):.3f}", f"{worst_iou:.3f}", f"{100 * worst_ghost:.2f} %"]
            cells.append([row.label, category, *figures])
    lines += [
        "",
        "By category:",
        "",
        *_table(["level", "category", "edge", "worst edge", "worst IoU", "worst ghost"], cells),
    ]
    cells = []
    for row in steps_rows:
        t = row.total()
        by = [[s.edge for s, c in zip(row.scores, samples, strict=True) if c.category == cat] for cat in categories]
        edges = [f"{t['edge']:.3f}", *(f"{np.mean(e):.3f} ({max(e):.3f})" for e in by)]
        cells.append(
            [row.label, *edges, f"{100 * t['worst_ghost']:.2f} %", f"{t['s_measure']:.3f}", f"{t['cpu_ms']:.0f}"]
        )
    header = ["model and step", "edge", *(f"{c} (worst)" for c in categories), "worst ghost", "S", "CPU ms"]
    lines += [
        "",
        "Each step on its own, in-process, edge error by category (CPU ms per picture for the model and the step, "
        "median, 0.1 to 0.3 MP):",
        "",
        *_table(header, cells),
    ]
    cells = []
    for label in LEVELS:
        figures = [costs.get(f"{label} {kind}") for kind in ("portrait", "product")]
        if all(figures):
            cells.append([label, *(f"{f['cpu_ms_per_image']:.0f} / {f['p50_ms']:.0f}" for f in figures)])  # type: ignore[index]
    lines += [
        "",
        "Cost through the mesh, 1 MP JPEG in, PNG out, one request at a time: CPU ms of all the mesh's processes "
        "per picture / wall p50 ms:",
        "",
        *_table(["level", "portrait", "product"], cells),
    ]
    return "\n".join(lines) + "\n"


# One composite per subject on the contact sheet, each on a hard background of its own.
SHEET = ("astronaut on brick", "hopper on similar", "chelsea on grass", "coffee on gradient")


def sheet_indices(samples: list[Composite]) -> list[int]:
    return [index for index, sample in enumerate(samples) if sample.name in SHEET]
