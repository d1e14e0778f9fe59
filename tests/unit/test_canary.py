"""The readiness canary's schedule, with a fake Triton (unit tests; the real canary runs in
tests/mesh/test_degraded.py): a heavy model is canaried less often, a failure is seen at
the next probe and cleared by the next answer."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from services.common.errors import ServiceError
from services.inference.models import CANARY_TIME_SHARE, ModelCatalog, ServedModel
from services.inference.profiles import ModelProfile
from services.inference.settings import InferenceSettings


class FakeServer:
    """Answers each model's canary after that model's delay, or fails while `failing`."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays
        self.calls = dict.fromkeys(delays, 0)
        self.failing: set[str] = set()
        self.up = True  # what is_ready answers

    async def is_ready(self, model_name: str, timeout_s: float | None = None) -> bool:
        return self.up

    async def infer(self, profile: ModelProfile, batch: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        self.calls[profile.name] += 1
        await asyncio.sleep(self.delays[profile.name])
        if profile.name in self.failing:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "down", reason="MODEL_UNAVAILABLE")
        return np.zeros((1, profile.height, profile.width, 1), np.float32)


def _profile(name: str) -> ModelProfile:
    return ModelProfile(
        name=name,
        input_name="IMAGE",
        output_name="MASK",
        layout="NHWC",
        width=8,
        height=8,
        resize="bilinear",
        scale="255",
        mean=(0, 0, 0),
        std=(1, 1, 1),
        output="probability",
        max_batch_size=4,
        max_queue=None,
    )


def _catalog(server: FakeServer, interval_s: float) -> ModelCatalog:
    """(Made inside a running loop: the catalog opens its Triton clients' channels.)"""
    names = list(server.delays)
    settings = InferenceSettings(
        canary_interval_s=interval_s, person_model=names[0], general_model=names[-1], fine_model=names[-1]
    )
    catalog = ModelCatalog(settings)
    catalog.models = {name: ServedModel(_profile(name), server, None) for name in server.delays}  # type: ignore[arg-type]
    return catalog


def test_a_heavy_model_is_canaried_at_most_its_time_share():
    light, heavy = "light", "heavy"
    server = FakeServer({light: 0.0, heavy: 0.01})  # the heavy canary's next is >= 1 s away

    async def probe_for(seconds: float) -> None:
        catalog = _catalog(server, interval_s=0.05)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert await catalog._canaries_answer((light, heavy))
            await asyncio.sleep(0.01)

    asyncio.run(probe_for(0.5))
    assert server.calls[heavy] == 1, f"heavy model canaried {server.calls[heavy]} times in 0.5 s"
    assert server.calls[light] >= 5, "the light model keeps its canary interval"
    assert server.delays[heavy] / CANARY_TIME_SHARE > 0.5


def test_a_failed_canary_keeps_the_service_out_until_the_model_answers_again():
    name = "model"
    server = FakeServer({name: 0.0})

    async def scenario() -> list[bool]:
        catalog = _catalog(server, interval_s=0.02)
        seen = [await catalog._canaries_answer((name,))]
        server.failing.add(name)
        await asyncio.sleep(0.03)
        seen.append(await catalog._canaries_answer((name,)))
        seen.append(await catalog._canaries_answer((name,)))  # not due yet: the failure stands
        server.failing.clear()
        await asyncio.sleep(0.03)
        seen.append(await catalog._canaries_answer((name,)))
        return seen

    assert asyncio.run(scenario()) == [True, False, False, True]


def test_a_triton_that_was_down_is_canaried_as_soon_as_it_is_back():
    heavy = "heavy"
    server = FakeServer({heavy: 0.01})

    async def scenario() -> list[bool]:
        catalog = _catalog(server, interval_s=0.01)
        seen = [await catalog.ready()]  # canaried; the next is >= 1 s away
        server.up = False
        seen.append(await catalog.ready())
        server.up = True
        seen.append(await catalog.ready())  # back: canaried again at once
        return seen

    assert asyncio.run(scenario()) == [True, False, True]
    assert server.calls[heavy] == 2
