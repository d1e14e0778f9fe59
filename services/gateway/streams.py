"""RemoveBackgroundStream: many items on one call, each answered once, in any order.

Flow control bounds the items in flight per stream and per process (with a fair share per
account), so a fast sender waits on gRPC's window instead of filling memory. The key is
checked again every `stream_reauthenticate_s`; a revoked key ends the stream. Each item is
charged like a unary call (services/gateway/removals.py), once its bytes go to gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
from google.protobuf import duration_pb2

from cutout.v1 import accounts_pb2, cutout_pb2, erase_pb2, options_pb2
from services.common import credits
from services.common.errors import ServiceError, abort, invalid_argument, to_service_error
from services.common.limits import FairSlots
from services.common.tasks import start_kept
from services.gateway.charging import Handoff
from services.gateway.downstreams import Downstreams
from services.gateway.removals import Removals
from services.gateway.settings import GatewaySettings


def _duration(seconds: float) -> duration_pb2.Duration:
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(round(seconds * 1e9))
    return elapsed


class Stream:
    """What one RemoveBackgroundStream call keeps: its items in flight, their tally, one writer."""

    def __init__(self, context: grpc.aio.ServicerContext, items_in_flight: int) -> None:
        self.context = context
        self.slots = asyncio.Semaphore(items_in_flight)
        self.ids: set[str] = set()  # ids of the items in flight
        self.tasks: set[asyncio.Task[None]] = set()
        self.ok = self.failed = 0
        self.millicredits_charged = 0
        self._writing = asyncio.Lock()  # gRPC allows one write at a time

    def start(self, item: Coroutine[Any, Any, None]) -> None:
        start_kept(self.tasks, item)

    async def write(self, result: cutout_pb2.StreamItemResult, handoff: Handoff | None = None) -> None:
        async with self._writing:
            if handoff is not None:
                handoff.handed = True  # from here on the caller may have it: it stays charged
            await self.context.write(cutout_pb2.StreamResponse(item=result))

    async def finish(self) -> None:
        """Waits for every item in flight to be answered."""
        while self.tasks:
            await asyncio.gather(*self.tasks)

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Streams:
    """Serves RemoveBackgroundStream calls (one instance per gateway process)."""

    def __init__(self, settings: GatewaySettings, down: Downstreams, removals: Removals) -> None:
        self.settings = settings
        self.down = down
        self.removals = removals
        # Stream items in flight over all streams of this process (flow control),
        # at most account_stream_items_in_flight of them for one account.
        self.shared_slots = FairSlots(settings.process_stream_items_in_flight, settings.account_stream_items_in_flight)

    async def serve(
        self, request_iterator: AsyncIterator[cutout_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        started = time.perf_counter()
        try:
            caller = await self.down.caller(context)
        except ServiceError as error:
            await abort(context, error)
        stream = Stream(context, self.settings.stream_items_in_flight)
        defaults = options_pb2.RemoveBackgroundOptions()
        # The key is checked again every stream_reauthenticate_s, whether items flow or
        # not: a revoked key ends the stream (and stops its items) within that time.
        revoked: list[ServiceError] = []
        watcher = asyncio.create_task(self._watch_key(context, asyncio.current_task(), revoked))
        authenticated_at = time.monotonic()
        try:
            while True:
                # Flow control: no read while this stream, or the whole process, has
                # its fill of items in flight; the sender then waits on gRPC's window.
                await stream.slots.acquire()
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                if request.WhichOneof("kind") == "defaults":
                    defaults = request.defaults
                    stream.slots.release()
                    continue
                if time.monotonic() - authenticated_at > self.settings.stream_reauthenticate_s:
                    # Also before an item, so none starts on a key revoked since the last round.
                    caller = await self.down.caller(context, fresh=True)
                    authenticated_at = time.monotonic()
                await self.shared_slots.acquire(caller.account_id)
                stream.start(self._item(stream, caller, request.item, defaults))
            await stream.finish()
        except ServiceError as error:
            await stream.cancel()  # first, so that no item writes while the stream is aborted
            await abort(context, error)
        except asyncio.CancelledError:
            if not revoked:
                raise
            await stream.cancel()
            await abort(context, revoked[0])
        finally:
            watcher.cancel()
            # Cancelled or failed: stop every item still in flight (each releases its hold).
            await stream.cancel()
        await context.write(
            cutout_pb2.StreamResponse(
                summary=cutout_pb2.StreamSummary(
                    items_ok=stream.ok,
                    items_failed=stream.failed,
                    credits_charged=credits.whole(stream.millicredits_charged),
                    credits_charged_decimal=credits.text(stream.millicredits_charged),
                    elapsed=_duration(time.perf_counter() - started),
                )
            )
        )

    async def _watch_key(
        self, context: grpc.aio.ServicerContext, stream_task: asyncio.Task[Any] | None, revoked: list[ServiceError]
    ) -> None:
        """Re-checks a stream's key; if it is refused, records why and cancels the stream."""
        while True:
            await asyncio.sleep(max(self.settings.stream_reauthenticate_s, 0.05))
            try:
                await self.down.caller(context, fresh=True)
            except ServiceError as error:
                if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    revoked.append(error)
                    if stream_task is not None:
                        stream_task.cancel()
                    return
                # accounts briefly unavailable: the stream goes on, the next round asks again

    async def _item(
        self,
        stream: Stream,
        caller: accounts_pb2.AuthenticateResponse,
        item: cutout_pb2.StreamItem,
        defaults: options_pb2.RemoveBackgroundOptions,
    ) -> None:
        """One item of a stream: answered exactly once, with its result or its own error."""
        started = time.perf_counter()
        owns_id = False  # a refused duplicate must not free the id of the item it duplicates
        try:
            if not 1 <= len(item.id) <= 200:
                raise invalid_argument("every item needs an id of 1 to 200 characters", field="item.id")
            if item.id in stream.ids:
                raise invalid_argument(
                    f"item id {item.id!r} is already in flight on this stream; give every item its own id",
                    field="item.id",
                    reason="DUPLICATE_ITEM_ID",
                )
            stream.ids.add(item.id)
            owns_id = True
            if item.HasField("regions"):

                async def deliver_erased(response: erase_pb2.EraseRegionsResponse, handoff: Handoff) -> None:
                    response.timings.total_ms = (time.perf_counter() - started) * 1000
                    await stream.write(cutout_pb2.StreamItemResult(id=item.id, erased=response), handoff)

                erase = erase_pb2.EraseRegionsRequest(
                    image=item.image, regions=item.regions, idempotency_key=item.idempotency_key
                )
                _, charged = await self.removals.erase(stream.context, caller, erase, deliver_erased)
            else:
                request = cutout_pb2.RemoveBackgroundRequest(
                    image=item.image,
                    options=item.options if item.HasField("options") else defaults,
                    idempotency_key=item.idempotency_key,
                )

                async def deliver(response: cutout_pb2.RemoveBackgroundResponse, handoff: Handoff) -> None:
                    response.timings.total_ms = (time.perf_counter() - started) * 1000
                    await stream.write(cutout_pb2.StreamItemResult(id=item.id, response=response), handoff)

                _, charged = await self.removals.remove(stream.context, caller, request, deliver)
            stream.ok += 1
            stream.millicredits_charged += charged
        except ServiceError as error:
            stream.failed += 1
            await stream.write(cutout_pb2.StreamItemResult(id=item.id, error=error.to_proto()))
        except Exception as error:  # the item still gets its one answer, through the boundary's mapping:
            # a downstream's error passed on, anything else INTERNAL with an error id (logged), never its text
            stream.failed += 1
            refused = to_service_error("/cutout.v1.Cutout/RemoveBackgroundStream", error)
            await stream.write(cutout_pb2.StreamItemResult(id=item.id, error=refused.to_proto()))
        finally:
            if owns_id:
                stream.ids.discard(item.id)
            self.shared_slots.release(caller.account_id)
            stream.slots.release()
