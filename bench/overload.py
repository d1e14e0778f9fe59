"""`make bench-overload`: the embedded mesh at 4x its measured capacity (issue 19).

    python -m bench.overload [--seconds 60] [--factor 4] [--keys 8]

First the capacity: 1 MP JPEG -> PNG cut-outs, closed loop at rising concurrency, until
throughput flattens (the best images/s, and the lowest concurrency within 5 % of it).
Then open-loop arrivals (Poisson, spread over `--keys` API keys of one account, so that
no per-key limit is what refuses) at `--factor` x that rate for `--seconds`. Every call
is recorded: OK, RESOURCE_EXHAUSTED with or without a google.rpc.RetryInfo, any other
status; the latency of admitted calls and the time to a refusal; the peak RSS of every
process (Triton's model stub counted with Triton); whether any process died; and,
afterwards, whether the credits charged equal the results delivered. Results are
printed and saved in bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from bench.load import funded_mesh, gateway_channel, unary_load
from bench.run import FAST_MESH, RESULTS, ProcessWatch, machine, percentile, photos
from cutout.client import CutoutClient
from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.common.settings import API_KEY_METADATA
from services.inference.model import fetch_models
from services.launcher import ROOT, Mesh

CAPACITY_STEPS = (1, 2, 4, 8, 16)
CREDITS = 50_000
CALL_TIMEOUT_S = 60.0  # a client's deadline; admitted calls must finish well within it


@dataclass
class Capacity:
    by_concurrency: dict[int, float]  # images/s, closed loop
    images_per_s: float  # the best of them
    flattens_at: int  # the lowest concurrency within 5 % of the best


@dataclass
class Overload:
    seconds: float
    offered_per_s: float
    sent: int = 0
    ok: int = 0
    exhausted_with_retry_info: int = 0
    exhausted_without_retry_info: int = 0
    refusal_reasons: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    admitted_p50_ms: float = 0.0
    admitted_p99_ms: float = 0.0
    admitted_max_ms: float = 0.0
    refusal_p50_ms: float = 0.0
    refusal_p99_ms: float = 0.0
    goodput_per_s: float = 0.0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)
    charged: str = ""
    delivered: int = 0
    held_after: str = ""


def capacity(mesh: Mesh, api_key: str, photo: bytes, steps: tuple[int, ...]) -> Capacity:
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo, options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_PNG)
    )
    measured: dict[int, float] = {}
    asyncio.run(unary_load(mesh.gateway.address, mesh.ca_file, api_key, request, 2, 4))  # warm-up
    for concurrency in steps:
        requests = max(24, 4 * concurrency)
        started = time.perf_counter()
        asyncio.run(unary_load(mesh.gateway.address, mesh.ca_file, api_key, request, concurrency, requests))
        measured[concurrency] = requests / (time.perf_counter() - started)
        print(f"capacity: concurrency {concurrency}: {measured[concurrency]:.1f} img/s", flush=True)
    best = max(measured.values())
    flattens_at = min(c for c, ips in measured.items() if ips >= 0.95 * best)
    return Capacity(measured, best, flattens_at)


def _reason(error: grpc.aio.AioRpcError) -> str:
    infos = [d.reason for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0] if infos else "(none: gRPC's own)"


async def offer(
    target: str, ca_file: Path, keys: list[str], photo: bytes, rate: float, seconds: float
) -> tuple[Overload, list[float], list[float]]:
    """Open loop: calls start at Poisson arrivals of `rate` per second, whatever the answers."""
    result = Overload(seconds=seconds, offered_per_s=rate)
    admitted: list[float] = []
    refusals: list[float] = []
    reasons: Counter[str] = Counter()
    other: Counter[str] = Counter()
    request = cutout_pb2.RemoveBackgroundRequest(
        image=photo, options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_PNG)
    )
    arrivals = random.Random(19)
    async with gateway_channel(target, ca_file) as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)

        async def one(key: str) -> None:
            started = time.perf_counter()
            try:
                await stub.RemoveBackground(request, metadata=[(API_KEY_METADATA, key)], timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                elapsed = (time.perf_counter() - started) * 1000
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusals.append(elapsed)
                    reasons[_reason(error)] += 1
                    if any(isinstance(d, error_details_pb2.RetryInfo) for d in error_details(error)):
                        result.exhausted_with_retry_info += 1
                    else:
                        result.exhausted_without_retry_info += 1
                else:
                    other[f"{error.code().name} {_reason(error)}"] += 1
                return
            admitted.append((time.perf_counter() - started) * 1000)
            result.ok += 1

        calls: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        due = started
        while due - started < seconds:
            due += arrivals.expovariate(rate)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            calls.append(asyncio.create_task(one(keys[len(calls) % len(keys)])))
        result.sent = len(calls)
        await asyncio.gather(*calls)
        result.goodput_per_s = result.ok / (time.perf_counter() - started)
    result.refusal_reasons = dict(reasons)
    result.other = dict(other)
    return result, admitted, refusals


def extra_keys(mesh: Mesh, data_dir: Path, api_key: str, count: int) -> list[str]:
    """`count` API keys of the demo account (named overload-N; those of earlier runs revoked),
    made with its demo key (calls without a key are rate-limited per address)."""
    login = json.loads((data_dir / "demo" / "account.json").read_text())
    with CutoutClient(mesh.gateway.address, api_key=api_key, ca_file=mesh.ca_file) as client:
        for key in client.list_api_keys().keys:
            if key.name.startswith("overload-") and not key.HasField("revoked_at"):
                client.revoke_api_key(key.id, password=login["password"])
        return [client.create_api_key(name=f"overload-{n}", password=login["password"]).api_key for n in range(count)]


def balance(mesh: Mesh, api_key: str) -> account_pb2.Balance:
    with CutoutClient(mesh.gateway.address, api_key=api_key, ca_file=mesh.ca_file) as client:
        return client.balance()


def _decimal(value: str) -> Decimal:
    return Decimal(value or "0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the overload lasts (60)")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load over the measured capacity (4)")
    parser.add_argument("--keys", type=int, default=8, help="API keys the arrivals are spread over (8)")
    parser.add_argument("--capacity", type=float, help="skip the capacity measurement and use this img/s")
    parser.add_argument("--env", nargs="*", default=[], help="extra NAME=VALUE settings for the mesh")
    parser.add_argument("--out", type=Path, default=RESULTS / "overload.json")
    args = parser.parse_args()
    fetch_models()
    data_dir = ROOT / ".data" / "bench-overload"
    photo = photos(data_dir)["1MP"]
    env = {**FAST_MESH, **dict(item.split("=", 1) for item in args.env)}
    with funded_mesh(data_dir, CREDITS, env=env) as (mesh, api_key):
        keys = extra_keys(mesh, data_dir, api_key, args.keys)
        if args.capacity:
            measured = Capacity({}, args.capacity, 0)
        else:
            measured = capacity(mesh, api_key, photo, CAPACITY_STEPS)
        print(f"capacity: {measured.images_per_s:.1f} img/s, flat from concurrency {measured.flattens_at}", flush=True)
        before = balance(mesh, api_key)
        watch = ProcessWatch(mesh)
        watch.start()
        rate = args.factor * measured.images_per_s
        print(f"overload: {rate:.1f} calls/s offered for {args.seconds:.0f} s over {len(keys)} keys", flush=True)
        result, admitted, refusals = asyncio.run(
            offer(mesh.gateway.address, mesh.ca_file, keys, photo, rate, args.seconds)
        )
        _, peak = watch.stop()
        result.peak_rss_mib = {role: round(mib, 1) for role, mib in peak.items()}
        processes = [*mesh.services, mesh.triton]
        result.crashed = [p.name if hasattr(p, "name") else "triton" for p in processes if p.process.poll() is not None]  # type: ignore[union-attr]
        if admitted:
            result.admitted_p50_ms = percentile(admitted, 50)
            result.admitted_p99_ms = percentile(admitted, 99)
            result.admitted_max_ms = max(admitted)
        if refusals:
            result.refusal_p50_ms = percentile(refusals, 50)
            result.refusal_p99_ms = percentile(refusals, 99)
        # Holds settle once every answer is in; then the ledger says what was charged.
        deadline = time.monotonic() + 60
        while _decimal((after := balance(mesh, api_key)).held_decimal) and time.monotonic() < deadline:
            time.sleep(0.5)
        result.held_after = str(_decimal(after.held_decimal))
        result.charged = str(_decimal(before.available_decimal) - _decimal(after.available_decimal))
        result.delivered = result.ok

    payload = {
        "machine": machine(),
        "settings": dict(item.split("=", 1) for item in args.env),
        "factor": args.factor,
        "keys": args.keys,
        "capacity": asdict(measured),
        "overload": asdict(result),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["overload"], indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
