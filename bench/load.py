"""What the benchmarks share: a mesh of their own with a funded account, and the load generator's
unary calls (the mesh cases of run.py, the model cases of quality.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from cutout.v1 import cutout_pb2, cutout_pb2_grpc
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA
from services.common.tls import channel_credentials
from services.launcher import DEMO_CREDITS, Mesh, demo_account


@contextlib.contextmanager
def funded_mesh(
    data_dir: Path, credits: int = DEMO_CREDITS, env: dict[str, str] | None = None
) -> Iterator[tuple[Mesh, str]]:
    """A benchmark's own embedded mesh in `data_dir`, and the API key of a demo account topped up
    to `credits`; the mesh is stopped on the way out, however the benchmark ends."""
    mesh = Mesh(data_dir=data_dir, env=env or {})
    mesh.start()
    try:
        yield (
            mesh,
            demo_account(
                mesh.gateway.address, mesh.admin_token, data_dir, credits, mesh.ca_file, admin=mesh.admin_address
            ),
        )
    finally:
        mesh.stop()


def gateway_channel(target: str, ca_file: Path) -> grpc.aio.Channel:
    """To the mesh's gateway over TLS, trusting the cell CA the mesh made."""
    return grpc.aio.secure_channel(target, channel_credentials(ca_file), options=channel_options())


async def unary_load(
    target: str,
    ca_file: Path,
    api_key: str,
    request: cutout_pb2.RemoveBackgroundRequest,
    concurrency: int,
    requests: int,
) -> list[float]:
    """`requests` calls of `request`, `concurrency` at a time; returns each latency in ms."""
    latencies: list[float] = []
    remaining = requests
    async with gateway_channel(target, ca_file) as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await stub.RemoveBackground(request, metadata=[(API_KEY_METADATA, api_key)], timeout=300)
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies
