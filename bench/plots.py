"""The pictures of docs/: the benchmark's plots and the README's before/after cut-out.

    python -m bench.plots                  # plots of the newest full run in bench/results/
    python -m bench.plots --results F.json # ... of that run
    python -m bench.plots --before-after   # start the embedded mesh, cut out the astronaut, draw it

`make bench` (bench/run.py) calls `write_all` after its run and `before_after` with the demo
cut-out its mesh made. Everything is written under docs/images/ as PNG, with no timestamp in the
file, so an unchanged input gives an unchanged picture.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "images"
PLOTS = IMAGES / "bench"
BEFORE_AFTER = IMAGES / "astronaut-before-after.png"
OUTPUTS = {"png": "RGBA PNG", "webp": "RGBA WebP", "mask": "mask", "pair": "colour + alpha pair"}
COLOURS = {"png": "tab:blue", "webp": "tab:orange", "mask": "tab:green", "pair": "tab:purple"}
# PNG metadata matplotlib would write: the version changes with every upgrade, so leave it out.
_METADATA = {"Software": None}


def latest_results(results: Path = RESULTS) -> Path:
    """The newest full run (`<stamp>.json`, not a quick, partial or overload one)."""
    runs = sorted(p for p in results.glob("*.json") if re.fullmatch(r"\d{8}T\d{6}Z\.json", p.name))
    if not runs:
        raise FileNotFoundError(f"no full run in {results}; `make bench` writes one")
    return runs[-1]


def _cases(run: dict) -> dict[tuple[str, str], list[dict]]:
    """Unary cases by (photo size, output), in order of concurrency."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for case in run["cases"]:
        if case["mode"] == "unary":
            grouped.setdefault((case["size"], case["output"]), []).append(case)
    return {key: sorted(cases, key=lambda c: c["concurrency"]) for key, cases in grouped.items()}


def _sizes(run: dict) -> list[str]:
    return sorted({case["size"] for case in run["cases"]}, key=lambda s: int(s.rstrip("MP")))


def _axes(count: int, title: str, source: str) -> tuple[plt.Figure, list[plt.Axes]]:
    figure, axes = plt.subplots(1, count, figsize=(5.2 * count, 4.0), squeeze=False)
    figure.suptitle(title, fontsize=12)
    figure.text(0.99, 0.01, source, ha="right", va="bottom", fontsize=7, color="grey")
    return figure, list(axes[0])


def _concurrency_axis(axis: plt.Axes, levels: list[int]) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.set_xlabel("concurrent calls")
    axis.grid(True, which="major", alpha=0.3)


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout(rect=(0, 0.03, 1, 0.95))
    figure.savefig(path, dpi=110, metadata=_METADATA)
    plt.close(figure)
    return path


def throughput(run: dict, source: str, path: Path) -> Path:
    """Images per second against concurrency, per output; the floor of each output dotted."""
    cases = _cases(run)
    figure, axes = _axes(len(_sizes(run)), "Throughput: the mesh against its floor", source)
    for axis, size in zip(axes, _sizes(run), strict=True):
        for output, label in OUTPUTS.items():
            series = cases.get((size, output))
            if not series:
                continue
            levels = [c["concurrency"] for c in series]
            axis.plot(levels, [c["images_per_s"] for c in series], "o-", color=COLOURS[output], label=label)
            floor = np.mean([c["floor_images_per_s"] for c in series])
            axis.axhline(floor, color=COLOURS[output], linestyle=":", linewidth=1)
        _concurrency_axis(axis, levels)
        axis.set_title(f"{size} photo (dotted: the floor, in-process, no gRPC)", fontsize=9)
        axis.set_ylabel("images per second")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    return _save(figure, path)


def latency(run: dict, source: str, path: Path) -> Path:
    """Median latency against concurrency, per output, with the p95 to p99 band."""
    cases = _cases(run)
    figure, axes = _axes(len(_sizes(run)), "Latency of one call", source)
    for axis, size in zip(axes, _sizes(run), strict=True):
        for output, label in OUTPUTS.items():
            series = cases.get((size, output))
            if not series:
                continue
            levels = [c["concurrency"] for c in series]
            axis.plot(levels, [c["p50_ms"] for c in series], "o-", color=COLOURS[output], label=f"{label} p50")
            axis.fill_between(
                levels, [c["p95_ms"] for c in series], [c["p99_ms"] for c in series], color=COLOURS[output], alpha=0.2
            )
        _concurrency_axis(axis, levels)
        axis.set_yscale("log")
        axis.set_title(f"{size} photo (band: p95 to p99)", fontsize=9)
        axis.set_ylabel("milliseconds")
        axis.legend(fontsize=8)
    return _save(figure, path)


def references(run: dict, source: str, path: Path) -> Path:
    """PNG cut-outs: the mesh against a user's own in-process pipelines (lean, Pillow defaults)."""
    cases = _cases(run)
    sizes = [size for size in _sizes(run) if cases.get((size, "png"))]
    figure, axes = _axes(len(sizes), "PNG cut-outs: the mesh against doing it in-process", source)
    for axis, size in zip(axes, sizes, strict=True):
        series = cases[(size, "png")]
        levels = [c["concurrency"] for c in series]
        axis.plot(levels, [c["images_per_s"] for c in series], "o-", color=COLOURS["png"], label="Cutout mesh")
        for key, label, style in (("lean", "lean in-process", "--"), ("pillow", "Pillow defaults in-process", "-.")):
            value = np.mean([c[f"{key}_images_per_s"] for c in series if c.get(f"{key}_images_per_s")] or [np.nan])
            axis.axhline(value, color="black", linestyle=style, linewidth=1, label=label)
        _concurrency_axis(axis, levels)
        axis.set_title(f"{size} photo (in-process: one process per core)", fontsize=9)
        axis.set_ylabel("images per second")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    return _save(figure, path)


def write_all(results: Path | None = None, out: Path = PLOTS) -> list[Path]:
    """The benchmark's plots of one run (the newest full run by default), under docs/images/bench/."""
    results = results or latest_results()
    run = json.loads(results.read_text())
    machine = run["machine"]
    source = f"make bench, {results.stem}: {machine.get('cores', '?')} cores, Triton {machine.get('triton', '')}"
    return [
        throughput(run, source, out / "throughput.png"),
        latency(run, source, out / "latency.png"),
        references(run, source, out / "references.png"),
    ]


def checkerboard(width: int, height: int, cell: int = 16) -> Image.Image:
    """The usual picture of transparency: light and mid grey squares."""
    y, x = np.mgrid[0:height, 0:width]
    board = np.where(((x // cell) + (y // cell)) % 2 == 0, 235, 200).astype(np.uint8)
    return Image.fromarray(board).convert("RGBA")


def before_after(photo: Path, cutout: Path, out: Path = BEFORE_AFTER) -> Path:
    """The photo and its cut-out over a checkerboard, side by side."""
    before = Image.open(photo).convert("RGBA")
    after = Image.open(cutout).convert("RGBA")
    if after.size != before.size:
        after = after.resize(before.size)
    width, height = before.size
    gap = 12
    canvas = Image.new("RGBA", (2 * width + gap, height), (255, 255, 255, 255))
    canvas.paste(before, (0, 0))
    board = checkerboard(width, height)
    board.alpha_composite(after)
    canvas.paste(board, (width + gap, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.convert("RGB").save(out, optimize=True)
    return out


def demo_before_after(out: Path = BEFORE_AFTER) -> Path:
    """Starts the embedded mesh, runs `make up`'s demo removal, and draws its before/after."""
    from bench.load import funded_mesh
    from services.common.assets import ASTRONAUT
    from services.launcher import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        with funded_mesh(data_dir) as (mesh, key):
            cutout = run_demo(mesh.gateway.address, data_dir, key, ca_file=mesh.ca_file)
            return before_after(ASTRONAUT.fetch(data_dir / "samples" / "astronaut.png"), cutout, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="a run's JSON (default: the newest full run)")
    parser.add_argument("--before-after", action="store_true", help="also the README's before/after picture")
    args = parser.parse_args()
    for path in write_all(args.results):
        print(f"wrote {path.relative_to(ROOT)}")
    if args.before_after:
        print(f"wrote {demo_before_after().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
