"""`make bench`: the embedded mesh under load, against the floor, in one run.

    python -m bench.run [--quick]

For each case (photo size x output format x concurrency) a grpc.aio load generator
drives the gateway and reports images/s, p50/p95/p99 latency, the mean Triton batch
size, CPU seconds per image of every process (the load generator's own included: it
shares the cores) and their peak resident memory. The floor (bench/floor.py) is
measured in the same run, right before and right after the mesh's cases of each photo
and output, because a shared machine's speed drifts over minutes; every mesh figure is
also given as a ratio to the mean of the two. Results go to bench/results/ (JSON and
Markdown), their tables into docs/benchmarks.md and docs/models/index.md, and their plots
(bench/plots.py) under docs/images/bench/. Then bench/quality.py scores the models' masks on a
set with known truth and measures each model's cost against the model in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import grpc
import psutil
from PIL import Image

from bench import edge, plots, quality
from bench.floor import FloorResult, measure_floor
from bench.load import funded_mesh, gateway_channel, unary_load
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.assets import ASTRONAUT
from services.common.settings import API_KEY_METADATA
from services.inference.model import PERSON_MODEL, fetch_models
from services.inference.triton_local import model_counts
from services.launcher import ROOT, Mesh
from tools.docs import replace_section

RESULTS = ROOT / "bench" / "results"
SIZES = {"1MP": (1024, 1024), "12MP": (3464, 3464)}
FORMATS = {
    "png": options_pb2.OUTPUT_FORMAT_PNG,
    "webp": options_pb2.OUTPUT_FORMAT_WEBP,
    "mask": options_pb2.OUTPUT_FORMAT_MASK,
    "pair": options_pb2.OUTPUT_FORMAT_COLOR_ALPHA_PAIR,  # colour JPEG + alpha PNG, against "png"
}
CONCURRENCY = (1, 4, 16)
REFERENCES = ("pillow", "lean")  # bench/floor.py's in-process pipelines beside the floor
ROLES = ("gateway", "accounts", "inference", "triton", "retention")
CLIENT = "load generator"  # this process, while it drives the mesh
STREAM_ITEMS = 200
# The benchmarks' meshes cut out at the fast level (the person model, its mask upsampled): the
# pipeline the floor and the in-process references run, for gRPC and HTTP callers alike. The
# finer levels' cost is bench/quality.py's, on a mesh with the service's own default.
FAST_MESH = {"CUTOUT_INFERENCE_DEFAULT_DETAIL": "fast"}
BENCH_CREDITS = 5000  # more than a full run spends (warm-ups included)


def photos(data_dir: Path) -> dict[str, bytes]:
    """The astronaut photo, resampled to each size and saved as a camera would (JPEG q90)."""
    astronaut = Image.open(ASTRONAUT.fetch(data_dir / "samples" / "astronaut.png")).convert("RGB")
    encoded = {}
    for name, size in SIZES.items():
        out = io.BytesIO()
        astronaut.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        encoded[name] = out.getvalue()
    return encoded


class ProcessWatch:
    """CPU seconds and peak RSS of the mesh's processes over one case."""

    def __init__(self, mesh: Mesh) -> None:
        assert mesh.triton and mesh.triton.process
        self.roles = {service.name: psutil.Process(service.process.pid) for service in mesh.services}
        self.triton = psutil.Process(mesh.triton.process.pid)

    def _processes(self) -> dict[str, list[psutil.Process]]:
        # Triton runs the Python-backend model in a stub process of its own: count it as Triton.
        return {
            **{name: [p] for name, p in self.roles.items()},
            "triton": [self.triton, *self.triton.children(recursive=True)],
            CLIENT: [psutil.Process()],
        }

    def start(self) -> None:
        self._cpu = {}
        for role, processes in self._processes().items():
            self._cpu[role] = sum(_cpu_s(p) for p in processes)
            for process in processes:  # resets VmHWM, the kernel's peak RSS
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        cpu, peak = {}, {}
        for role, processes in self._processes().items():
            cpu[role] = sum(_cpu_s(p) for p in processes) - self._cpu[role]
            peak[role] = sum(_peak_rss_mib(p) for p in processes)
        return cpu, peak


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _peak_rss_mib(process: psutil.Process) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


@dataclass
class CaseResult:
    size: str
    output: str
    mode: str  # "unary": `concurrency` calls at a time; "stream": one RemoveBackgroundStream
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float
    cpu_s_per_image: dict[str, float]
    peak_rss_mib: dict[str, float]
    # Set by compare(), once the floor after this photo and output's cases is measured too.
    floor_images_per_s: float = 0.0
    floor_p50_ms: float = 0.0
    throughput_vs_floor: float = 0.0
    p50_minus_floor_ms: float = 0.0
    # The in-process references (PNG rows only): Pillow's defaults and the lean pipeline.
    pillow_images_per_s: float = 0.0
    pillow_p50_ms: float = 0.0
    throughput_vs_pillow: float = 0.0
    lean_images_per_s: float = 0.0
    lean_p50_ms: float = 0.0
    throughput_vs_lean: float = 0.0
    p50_minus_lean_ms: float = 0.0

    def compare(self, floor: FloorResult, references: dict[str, FloorResult] | None = None) -> None:
        self.floor_images_per_s = floor.images_per_s
        self.floor_p50_ms = percentile(floor.latencies_ms, 50)
        self.throughput_vs_floor = self.images_per_s / floor.images_per_s
        self.p50_minus_floor_ms = self.p50_ms - self.floor_p50_ms
        references = references or {}
        if "pillow" in references:
            self.pillow_images_per_s = references["pillow"].images_per_s
            self.pillow_p50_ms = percentile(references["pillow"].latencies_ms, 50)
            self.throughput_vs_pillow = self.images_per_s / self.pillow_images_per_s
        if "lean" in references:
            self.lean_images_per_s = references["lean"].images_per_s
            self.lean_p50_ms = percentile(references["lean"].latencies_ms, 50)
            self.throughput_vs_lean = self.images_per_s / self.lean_images_per_s
            self.p50_minus_lean_ms = self.p50_ms - self.lean_p50_ms


async def drive(
    target: str, ca_file: Path, api_key: str, photo: bytes, output_format: int, concurrency: int, requests: int
) -> list[float]:
    """`requests` calls, `concurrency` at a time; returns each latency in ms."""
    options = options_pb2.RemoveBackgroundOptions(format=output_format)
    request = cutout_pb2.RemoveBackgroundRequest(image=photo, options=options)
    return await unary_load(target, ca_file, api_key, request, concurrency, requests)


async def drive_stream(
    target: str, ca_file: Path, api_key: str, photo: bytes, output_format: int, concurrency: int, requests: int
) -> list[float]:
    """One RemoveBackgroundStream of `requests` items, sent as fast as the gateway reads them;
    returns each item's latency in ms, from the moment gRPC took it to its answer.
    `concurrency` is unused: the gateway's flow control sets how many items are in flight."""
    taken: dict[str, float] = {}
    latencies: list[float] = []

    async def items() -> AsyncIterator[cutout_pb2.StreamRequest]:
        yield cutout_pb2.StreamRequest(defaults=options_pb2.RemoveBackgroundOptions(format=output_format))
        for n in range(requests):
            taken[str(n)] = time.perf_counter()
            yield cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=str(n), image=photo))

    async with gateway_channel(target, ca_file) as channel:
        call = cutout_pb2_grpc.CutoutStub(channel).RemoveBackgroundStream(
            items(), metadata=[(API_KEY_METADATA, api_key)], timeout=1800
        )
        async for answer in call:
            if answer.HasField("item"):
                if answer.item.HasField("error"):
                    raise RuntimeError(f"stream item {answer.item.id} failed: {answer.item.error.message}")
                latencies.append((time.perf_counter() - taken[answer.item.id]) * 1000)
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_case(
    mesh: Mesh,
    api_key: str,
    watch: ProcessWatch,
    size: str,
    output: str,
    mode: str,
    concurrency: int,
    photo: bytes,
    requests: int,
) -> CaseResult:
    load = drive_stream if mode == "stream" else drive
    warm_up = max(1, min(concurrency, 4))
    asyncio.run(load(mesh.gateway.address, mesh.ca_file, api_key, photo, FORMATS[output], concurrency, warm_up))
    inferences_before, executions_before = model_counts(mesh.triton, PERSON_MODEL)  # type: ignore[union-attr]
    watch.start()
    started = time.perf_counter()
    latencies = asyncio.run(
        load(mesh.gateway.address, mesh.ca_file, api_key, photo, FORMATS[output], concurrency, requests)
    )
    elapsed = time.perf_counter() - started
    cpu, peak = watch.stop()
    inferences_after, executions_after = model_counts(mesh.triton, PERSON_MODEL)  # type: ignore[union-attr]
    return CaseResult(
        size=size,
        output=output,
        mode=mode,
        concurrency=concurrency,
        requests=requests,
        images_per_s=requests / elapsed,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_batch=(inferences_after - inferences_before) / max(1, executions_after - executions_before),
        cpu_s_per_image={role: seconds / requests for role, seconds in cpu.items()},
        peak_rss_mib={role: mib for role, mib in peak.items() if role != CLIENT},
    )


def machine() -> dict[str, object]:
    versions = {
        name: metadata.version(name)
        for name in (
            "grpcio",
            "protobuf",
            "numpy",
            "pillow",
            "scipy",
            "tritonclient",
            "nvidia-pytriton",
            "ai-edge-litert",
            "fpng",
            "opencv-python-headless",
        )
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "triton": "2.51 (nvidia-pytriton wheel, CPU, Python backend)",
        "versions": versions,
        # This machine is shared: its 1-minute load average at the end of the run says how much.
        "load_average": round(os.getloadavg()[0], 1),
    }


def markdown(results: list[CaseResult], info: dict[str, object]) -> str:
    lines = [
        f"Measured {info['date']} on {info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}, "
        f"Triton {info['triton']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",  # type: ignore[union-attr]
        f"1-minute load average at the end: {info['load_average']} on {info['cores']} cores (a shared machine).",
        "",
        "| photo | output | load | img/s | x floor | p50 ms | p50 - floor | p95 ms | p99 ms | batch "
        f"| CPU s/img {' / '.join((*ROLES, CLIENT))} | peak RSS MiB {' / '.join(ROLES)} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        cpu, rss = r.cpu_s_per_image, r.peak_rss_mib
        lines.append(
            f"| {r.size} | {r.output} | {_load(r)} | {r.images_per_s:.1f} | {r.throughput_vs_floor:.2f} "
            f"| {r.p50_ms:.0f} | {r.p50_minus_floor_ms:+.0f} | {r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.mean_batch:.1f} "
            f"| {' / '.join(f'{cpu[role]:.3f}' for role in (*ROLES, CLIENT))} "
            f"| {' / '.join(f'{rss[role]:.0f}' for role in ROLES)} |"
        )
    floors = {(r.size, r.output): (r.floor_images_per_s, r.floor_p50_ms) for r in results}
    lines += [
        "",
        "Floor (same photos and encoders, no gRPC, no Triton, one process per core; measured before and after "
        "the mesh's cases of each row, img/s the mean of the two, p50 of one worker alone):",
        "",
        "| photo | output | img/s | p50 ms |",
        "| --- | --- | ---: | ---: |",
    ]
    lines += [f"| {size} | {output} | {ips:.1f} | {p50:.0f} |" for (size, output), (ips, p50) in floors.items()]
    compared = [r for r in results if r.lean_images_per_s and r.mode == "unary"]
    if compared:
        lines += [
            "",
            "Against a user's own in-process pipeline (same model, LiteRT on one thread, one process per core, "
            "measured beside the floor): **Pillow defaults** (decode, resize, model, mask resized back, `putalpha`, "
            '`save("PNG")`) and **lean** (draft decode for the model input, bilinear mask, zlib level 1, '
            "no refinement):",
            "",
            "| photo | output | load | mesh img/s | x lean | x Pillow defaults | p50 ms | p50 - lean | lean img/s "
            "| lean p50 ms | Pillow img/s | Pillow p50 ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r.size} | {r.output} | {_load(r)} | {r.images_per_s:.1f} | {r.throughput_vs_lean:.2f} "
            f"| {r.throughput_vs_pillow:.2f} | {r.p50_ms:.0f} | {r.p50_minus_lean_ms:+.0f} | {r.lean_images_per_s:.1f} "
            f"| {r.lean_p50_ms:.0f} | {r.pillow_images_per_s:.1f} | {r.pillow_p50_ms:.0f} |"
            for r in compared
        ]
    return "\n".join(lines) + "\n" + pair_against_png(results)


def pair_against_png(results: list[CaseResult]) -> str:
    """The colour + alpha pair against the RGBA PNG, photo by photo and load by load, from
    the same run's unary cases: throughput, median latency and inference's CPU per image."""
    cases = {(r.size, r.output, r.concurrency): r for r in results if r.mode == "unary"}
    rows = []
    for (size, output, concurrency), png in cases.items():
        pair = cases.get((size, "pair", concurrency))
        if output != "png" or pair is None:
            continue
        png_cpu, pair_cpu = png.cpu_s_per_image["inference"], pair.cpu_s_per_image["inference"]
        rows.append(
            f"| {size} | {concurrency} | {png.images_per_s:.1f} → {pair.images_per_s:.1f} "
            f"| {pair.images_per_s / png.images_per_s:.2f} | {png.p50_ms:.0f} → {pair.p50_ms:.0f} "
            f"| {png_cpu:.3f} → {pair_cpu:.3f} | {pair_cpu / png_cpu:.2f} |"
        )
    if not rows:
        return ""
    header = [
        "",
        "The colour + alpha pair against the RGBA PNG (same run, same photos; PNG → pair):",
        "",
        "| photo | load | img/s | x PNG | p50 ms | inference CPU s/img | x PNG |",
        "| --- | ---: | --- | ---: | --- | --- | ---: |",
    ]
    return "\n".join(header + rows) + "\n"


def _load(result: CaseResult) -> str:
    return f"stream of {result.requests}" if result.mode == "stream" else str(result.concurrency)


def update_docs(table: str, section: str = "bench") -> None:
    """The table into the docs page that holds `<!-- section:start -->` ... `<!-- section:end -->`
    (bench: docs/benchmarks.md, models: docs/models/index.md)."""
    replace_section(section, table)


def _unary_requests(size: str, concurrency: int, quick: bool) -> int:
    if concurrency == 1:
        return 24 if size == "1MP" else 6
    return (64 if size == "1MP" else 12) * (1 if quick else 2)


def _floor(photo: bytes, size: str, output: str, pipeline: str = "floor") -> FloorResult:
    items = 24 if size == "1MP" else 6
    floor = measure_floor(photo, FORMATS[output], items * 2, items, pipeline)
    print(
        f"{pipeline} {size} {output}: {floor.images_per_s:.1f} img/s, p50 {percentile(floor.latencies_ms, 50):.0f} ms",
        flush=True,
    )
    return floor


def _references(photo: bytes, size: str, output: str) -> dict[str, FloorResult]:
    """The in-process references a PNG row is compared with (they make PNG cut-outs only)."""
    return {pipeline: _floor(photo, size, output, pipeline) for pipeline in REFERENCES} if output == "png" else {}


def _print_case(result: CaseResult) -> None:
    rss = ", ".join(f"{role} {mib:.0f}" for role, mib in result.peak_rss_mib.items())
    versus = (
        f", {result.throughput_vs_lean:.2f}x lean, {result.throughput_vs_pillow:.2f}x Pillow defaults, "
        f"p50 {result.p50_minus_lean_ms:+.0f} vs lean"
        if result.lean_images_per_s
        else ""
    )
    print(
        f"mesh {result.size} {result.output} {_load(result)}: {result.images_per_s:.1f} img/s "
        f"({result.throughput_vs_floor:.2f}x floor), p50 {result.p50_ms:.0f} ms "
        f"({result.p50_minus_floor_ms:+.0f} vs floor){versus}, batch {result.mean_batch:.1f}; peak RSS MiB {rss}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1MP PNG only, fewer requests (a smoke run)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), help="only these photos (a published partial run)")
    parser.add_argument("--outputs", nargs="+", choices=list(FORMATS), help="only these outputs")
    args = parser.parse_args()
    fetch_models()
    data_dir = ROOT / ".data" / "bench"
    sources = photos(data_dir)
    sizes = ["1MP"] if args.quick else args.sizes or list(SIZES)
    outputs = ["png"] if args.quick else args.outputs or list(FORMATS)

    results: list[CaseResult] = []
    with funded_mesh(data_dir, BENCH_CREDITS, env=FAST_MESH) as (mesh, api_key):
        watch = ProcessWatch(mesh)
        for size in sizes:
            for output in outputs:
                cases = [
                    ("unary", concurrency, _unary_requests(size, concurrency, args.quick))
                    for concurrency in CONCURRENCY
                ]
                if output == "png":  # one stream of PNG cut-outs: throughput and memory under flow control
                    cases.append(("stream", 0, 40 if args.quick else STREAM_ITEMS))
                floor_before = _floor(sources[size], size, output)
                references_before = _references(sources[size], size, output)
                group = [
                    run_case(mesh, api_key, watch, size, output, mode, concurrency, sources[size], requests)
                    for mode, concurrency, requests in cases
                ]
                floor = floor_before.merged(_floor(sources[size], size, output))
                references = {
                    name: before.merged(after)
                    for (name, before), after in zip(
                        references_before.items(), _references(sources[size], size, output).values(), strict=True
                    )
                }
                for result in group:
                    result.compare(floor, references)
                    _print_case(result)
                results += group
        watch.start()  # the general model's batches peak here: Triton's memory bound is set by them
        try:
            models, models_table = quality.run(mesh, api_key, args.quick)
        except grpc.RpcError as error:  # a loaded machine can time a model out: keep the cases measured
            print(f"model quality and cost not measured: {error.code().name}", flush=True)
            models, models_table = {"error": error.code().name}, ""
        peak = {role: round(mib) for role, mib in watch.stop()[1].items() if role != CLIENT}
        # The HTTP edge beside the gRPC edge, 1 MP PNG (issue #29; bench/edge.py).
        edge_cases, edge_table = edge.run(mesh, api_key, sources["1MP"], args.quick)
        models["http_edge"] = [asdict(case) for case in edge_cases]
        models_table += "\nThe HTTP edge beside the gRPC edge (1 MP PNG, full size):\n\n" + edge_table
        models["peak_rss_mib"] = peak
        models_table += (
            "\nPeak RSS over the two steps above, MiB: " + ", ".join(f"{r} {m}" for r, m in peak.items()) + "\n"
        )

    info = machine()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    # Smoke runs are kept out of the published results.
    results_dir = data_dir / "quick" if args.quick else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "cases": [asdict(r) for r in results], "models": models}
    (results_dir / f"{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(results, info)
    (results_dir / f"{stamp}.md").write_text(table + "\n" + models_table)
    if not args.quick:
        (RESULTS / "latest.md").write_text(table + "\n" + models_table)
        update_docs(table)
        if models_table:
            update_docs(models_table, "models")
        plots.write_all(results_dir / f"{stamp}.json")
        plots.demo_before_after()  # the README's picture: `make up`'s demo, on a mesh with its defaults
    print("\n" + table + "\n" + models_table)
    print(f"saved {results_dir / stamp}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
