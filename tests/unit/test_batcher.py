"""The batcher alone, with a fake model (unit tests; the real path is in test_batching.py)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from services.common.errors import ServiceError
from services.inference.batcher import Batcher


class FakeModel:
    """Doubles its input and records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.delay_s = delay_s
        self.error = error

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        await asyncio.sleep(self.delay_s)
        if self.error:
            raise self.error
        return batch * 2


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_outputs():
    async def scenario():
        model = FakeModel(delay_s=0.01)
        batcher = Batcher(model, max_batch_size=8, max_wait_s=0.05, max_queue=64)
        results = await asyncio.gather(*(batcher.submit(np.full((2,), i)) for i in range(20)))
        await batcher.close()
        return model, results

    model, results = run(scenario())
    assert [list(r.output) for r in results] == [[2 * i, 2 * i] for i in range(20)]
    assert sum(model.batch_sizes) == 20
    assert max(model.batch_sizes) == 8 and len(model.batch_sizes) < 20
    assert all(r.batch_size in model.batch_sizes for r in results)


def test_a_lone_request_is_not_held_back():
    async def scenario():
        batcher = Batcher(FakeModel(), max_batch_size=8, max_wait_s=60, max_queue=8)
        result = await asyncio.wait_for(batcher.submit(np.ones(1)), timeout=5)  # not the 60 s maximum wait
        await batcher.close()
        return result

    result = run(scenario())
    assert result.batch_size == 1 and result.output[0] == 2


def test_a_batch_waits_for_requests_still_decoding_up_to_the_maximum_wait():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=8, max_wait_s=5, max_queue=8)

        async def decoding_then_submit(decode_s: float):
            with batcher.arriving():
                await asyncio.sleep(decode_s)
            return await batcher.submit(np.ones(1))

        results = await asyncio.gather(batcher.submit(np.ones(1)), decoding_then_submit(0.05))
        short_wait = Batcher(model, max_batch_size=8, max_wait_s=0.05, max_queue=8)
        with short_wait.arriving():  # never submits: the batch leaves after the maximum wait
            lone = await asyncio.wait_for(short_wait.submit(np.ones(1)), timeout=5)
        await batcher.close()
        await short_wait.close()
        return model, results, lone

    model, results, lone = run(scenario())
    assert model.batch_sizes == [2, 1]
    assert [r.batch_size for r in results] == [2, 2] and lone.batch_size == 1


def test_a_full_queue_refuses_at_once_with_resource_exhausted():
    async def scenario():
        batcher = Batcher(FakeModel(delay_s=0.05), max_batch_size=2, max_wait_s=0.001, max_queue=4)
        # Six arrive in one tick, before any batch leaves: four fit, two are refused.
        outcomes = await asyncio.gather(*(batcher.submit(np.ones(1)) for _ in range(6)), return_exceptions=True)
        after = await batcher.submit(np.ones(1))  # room again once the queue drained
        await batcher.close()
        return outcomes, after

    outcomes, after = run(scenario())
    refused = [o for o in outcomes if isinstance(o, ServiceError)]
    assert len(refused) == 2
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.reason == "INFERENCE_QUEUE_FULL" for e in refused)
    assert after.output[0] == 2


def test_a_model_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on():
    async def scenario():
        model = FakeModel(error=ServiceError(grpc.StatusCode.UNAVAILABLE, "down"))
        batcher = Batcher(model, max_batch_size=4, max_wait_s=0.01, max_queue=8)
        outcomes = await asyncio.gather(*(batcher.submit(np.ones(1)) for _ in range(3)), return_exceptions=True)
        model.error = None
        after = await batcher.submit(np.ones(1))
        await batcher.close()
        return outcomes, after

    outcomes, after = run(scenario())
    assert all(isinstance(o, ServiceError) and o.code == grpc.StatusCode.UNAVAILABLE for o in outcomes)
    assert after.output[0] == 2


def test_a_cancelled_request_is_left_out_of_its_batch():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=8, max_wait_s=5, max_queue=8)
        with batcher.arriving():  # holds the batch open while one caller gives up
            gone = asyncio.create_task(batcher.submit(np.ones(1)))
            stays = asyncio.create_task(batcher.submit(np.ones(1)))
            await asyncio.sleep(0.01)
            gone.cancel()
            await asyncio.sleep(0.01)
        result = await stays
        await batcher.close()
        return model, result

    model, result = run(scenario())
    assert model.batch_sizes == [1] and result.batch_size == 1
