"""The load generator's unary calls, shared by the mesh cases (run.py) and the model cases (quality.py)."""

from __future__ import annotations

import asyncio
import time

import grpc

from cutout.v1 import cutout_pb2, cutout_pb2_grpc
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA


async def unary_load(
    target: str, api_key: str, request: cutout_pb2.RemoveBackgroundRequest, concurrency: int, requests: int
) -> list[float]:
    """`requests` calls of `request`, `concurrency` at a time; returns each latency in ms."""
    latencies: list[float] = []
    remaining = requests
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
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
