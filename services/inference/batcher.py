"""Collects the model inputs of concurrent requests into one batched model call.

The first request of a batch waits at most `max_wait_s` for company, and only while
company is on its way: callers announce themselves with `arriving()` while they
decode, so a lone request is never held back. A batch never holds more than
`max_batch_size` images; at most `max_queue` images wait in all, past which callers
get RESOURCE_EXHAUSTED at once instead of an unbounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from services.common.errors import ServiceError

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class BatchedResult:
    output: np.ndarray  # this request's slice of the batch output
    batch_size: int  # how many requests shared the model call
    wait_s: float  # from submit until the batch left
    model_s: float  # the model call itself


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[BatchedResult]
    submitted: float


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_concurrent_batches: int = 2,
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size:
            raise ValueError("need 1 <= max_batch_size <= max_queue")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        # While one batch is at the model, the next one fills up.
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._loop_task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._arriving = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request that will submit soon (it is decoding), so batches wait for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._arrived.set()  # a batch waiting for this one re-checks

    async def submit(self, tensor: np.ndarray) -> BatchedResult:
        if len(self._pending) >= self.max_queue:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the inference queue is full ({self.max_queue} images waiting); retry with backoff",
                reason="INFERENCE_QUEUE_FULL",
            )
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run())
        future: asyncio.Future[BatchedResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(tensor, future, time.perf_counter()))
        self._arrived.set()
        # A cancelled caller (deadline, disconnect) cancels its future; the batch
        # loop then drops its image instead of running it.
        return await future

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._batches):
            task.cancel()
        for item in self._pending:
            item.future.cancel()

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            task = asyncio.create_task(self._dispatch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _next_batch(self) -> list[_Pending]:
        while not self._live_count():
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].submitted + self.max_wait_s
        while self._live_count() < self.max_batch_size and self._arriving:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        batch = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    def _live_count(self) -> int:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # callers that gave up before their batch left
        return sum(not item.future.done() for item in self._pending)

    async def _dispatch(self, batch: list[_Pending]) -> None:
        try:
            started = time.perf_counter()
            try:
                outputs = await self._run_batch(np.stack([item.tensor for item in batch]))
            except Exception as exc:  # every waiter of this batch gets the same error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            model_s = time.perf_counter() - started
            for index, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(BatchedResult(outputs[index], len(batch), started - item.submitted, model_s))
        finally:
            self._slots.release()
