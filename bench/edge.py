"""The HTTP edge beside the gRPC edge (issue #29): the same photo and output through
`POST /v1.0/removebg` (multipart, HTTP/1.1 keep-alive, one connection per client thread) and
through the gateway's RemoveBackground, at concurrency 1 (p50) and 16 (images/s), in one run;
and the edge's peak resident memory against the bound its settings state.

    python -m bench.edge [--quick]      # its own mesh; `make bench` runs it inside bench.run
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil
import requests

from bench.load import funded_mesh, unary_load
from cutout.v1 import cutout_pb2, options_pb2
from services.edge.settings import EdgeSettings
from services.launcher import ROOT, Mesh

CONCURRENCY = (1, 16)


@dataclass
class EdgeCase:
    edge: str  # "gRPC" or "HTTP"
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _http_load(mesh: Mesh, api_key: str, photo: bytes, concurrency: int, count: int) -> list[float]:
    latencies: list[float] = []
    remaining = [count]
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                answer = session.post(
                    f"{mesh.edge.url}/v1.0/removebg",
                    headers={"X-Api-Key": api_key},
                    files={"image_file": photo},
                    data={"size": "full", "format": "png"},
                    verify=str(mesh.ca_file),  # per request: a REQUESTS_CA_BUNDLE would win over the session's
                    timeout=300,
                )
                answer.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return latencies


def _grpc_load(mesh: Mesh, api_key: str, photo: bytes, concurrency: int, count: int) -> list[float]:
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo,
        options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_PNG, size=options_pb2.SIZE_FULL),
    )
    return asyncio.run(unary_load(mesh.gateway.address, mesh.ca_file, api_key, request, concurrency, count))


def run(mesh: Mesh, api_key: str, photo: bytes, quick: bool = False) -> tuple[list[EdgeCase], str]:
    """The cases (gRPC and HTTP interleaved per concurrency, so that drift hits both) and a table."""
    edge_process = psutil.Process(mesh.edge.process.pid) if mesh.edge.process else None
    peak_rss = 0.0
    cases = []
    for concurrency in CONCURRENCY:
        count = (8 if quick else 24) if concurrency == 1 else (32 if quick else 96)
        for name, load in (("gRPC", _grpc_load), ("HTTP", _http_load)):
            load(mesh, api_key, photo, min(concurrency, 4), min(concurrency, 4))  # warm-up
            started = time.perf_counter()
            latencies = load(mesh, api_key, photo, concurrency, count)
            elapsed = time.perf_counter() - started
            cases.append(EdgeCase(name, concurrency, count, count / elapsed, _p50(latencies)))
            if edge_process is not None:
                peak_rss = max(peak_rss, edge_process.memory_info().rss / 2**20)
    settings = EdgeSettings()
    bound = settings.max_requests * 3 * settings.max_body_bytes / 2**20
    lines = [
        "| edge | concurrency | requests | images/s | p50 ms |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {c.edge} | {c.concurrency} | {c.requests} | {c.images_per_s:.1f} | {c.p50_ms:.0f} |" for c in cases),
        "",
        f"HTTP edge resident memory after the cases: {peak_rss:.0f} MiB (bound stated by its settings: "
        f"max_requests {settings.max_requests} x 3 x max_body_bytes {settings.max_body_bytes / 2**20:.0f} MiB "
        f"= {bound:.0f} MiB).",
    ]
    return cases, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    from bench.run import FAST_MESH, photos

    data_dir = ROOT / ".data" / "bench-edge"
    photo = photos(data_dir)["1MP"]
    with funded_mesh(data_dir, 1000, env=FAST_MESH) as (mesh, api_key):
        _, table = run(mesh, api_key, photo, args.quick)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
