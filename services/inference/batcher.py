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
from opentelemetry import trace

from services.common.errors import ServiceError
from services.common.tasks import start_kept
from services.common.telemetry import meter, tracer

_batch_size = meter.create_histogram("cutout.inference.batch_size", description="Images per model call")
_batch_wait = meter.create_histogram(
    "cutout.inference.batch_wait", unit="ms", description="Time an image waited in the batcher for its batch"
)

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
    span_context: trace.SpanContext  # of the request, for the batch span's links


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_concurrent_batches: int = 2,
        span_attributes: dict[str, str] | None = None,
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
        self._span_attributes = span_attributes or {}

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
                retry_after_s=1.0,
            )
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run())
        future: asyncio.Future[BatchedResult] = asyncio.get_running_loop().create_future()
        span_context = trace.get_current_span().get_span_context()
        self._pending.append(_Pending(tensor, future, time.perf_counter(), span_context))
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
            start_kept(self._batches, self._dispatch(batch))

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
        # One model call serves many requests, so its span has no parent of its own:
        # it starts a trace and links to the span of every request it carries.
        links = [trace.Link(item.span_context) for item in batch if item.span_context.is_valid]
        with tracer.start_as_current_span(
            "inference.batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            links=links,
            attributes={**self._span_attributes, "cutout.batch_size": len(batch)},
        ) as span:
            try:
                started = time.perf_counter()
                _batch_size.record(len(batch))
                for item in batch:
                    _batch_wait.record((started - item.submitted) * 1000)
                try:
                    outputs = await self._run_batch(np.stack([item.tensor for item in batch]))
                except Exception as exc:  # every waiter of this batch gets the same error
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    return
                model_s = time.perf_counter() - started
                for index, item in enumerate(batch):
                    if not item.future.done():
                        item.future.set_result(
                            BatchedResult(outputs[index], len(batch), started - item.submitted, model_s)
                        )
            finally:
                self._slots.release()
