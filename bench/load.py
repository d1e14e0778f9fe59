"""The load generator's unary calls, shared by the mesh cases (run.py) and the model cases (quality.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from cutout.v1 import cutout_pb2, cutout_pb2_grpc
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA
from services.common.tls import channel_credentials


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
