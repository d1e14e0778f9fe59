"""The public servicer cutout.v1.Cutout (administration is not served here: accounts
serves cutout.v1.Admin on a listener of its own, inside the cell).

The gateway is thin: it authenticates the caller (accounts looks the key up on every
call), charges RemoveBackground through the credit ledger (reserve, then commit on
success or release on any failure) and forwards the pixels to inference. The account
calls are forwarded to accounts unchanged, with the caller's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cutout.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    cutout_pb2,
    cutout_pb2_grpc,
    erase_pb2,
    inference_pb2,
    inference_pb2_grpc,
    options_pb2,
    retention_pb2,
    retention_pb2_grpc,
    rights_pb2,
)
from services.common import credits
from services.common.channels import mesh_channel
from services.common.chunks import pieces
from services.common.errors import (
    ServiceError,
    abort,
    invalid_argument,
    processing_restricted,
    relay,
    status_details,
    to_service_error,
)
from services.common.limits import FairSlots
from services.common.server import ServiceSpec
from services.common.settings import API_KEY_METADATA, SOURCE_METADATA
from services.common.tasks import start_kept
from services.gateway import export
from services.gateway.admission import Admission, admitted_caller, source_address
from services.gateway.charging import Charger, Deliver, Handoff, api_key, check_erase, check_removal, new_key
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Message)


INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
INFERENCE_UNAVAILABLE = "the inference service is unavailable; retry shortly"
ACCOUNTS_SERVICE = accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name
ACCOUNTS_UNAVAILABLE = "the accounts service is unavailable; retry shortly"
RETENTION_SERVICE = retention_pb2.DESCRIPTOR.services_by_name["Retention"].full_name
RETENTION_UNAVAILABLE = "the retention service is unavailable; retry shortly"


def request_hash(request: cutout_pb2.RemoveBackgroundRequest) -> str:
    """sha256 of what the request asks (image and options): only this is stored, never the image."""
    digest = hashlib.sha256(request.image)
    digest.update(request.options.SerializeToString(deterministic=True))
    return digest.hexdigest()


def erase_hash(request: erase_pb2.EraseRegionsRequest) -> str:
    """As request_hash, for an erase; its own prefix, so a key reused for a removal never matches it."""
    digest = hashlib.sha256(b"erase\0")
    digest.update(request.image)
    digest.update(request.regions.SerializeToString(deterministic=True))
    return digest.hexdigest()


class Downstreams:
    """Channels to inference, accounts and retention, shared by both public servicers."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.inference_channel = mesh_channel(settings.inference_target, settings, settings.max_message_bytes)
        self.inference = inference_pb2_grpc.InferenceStub(self.inference_channel)
        self.accounts_channel = mesh_channel(settings.accounts_target, settings)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.accounts_channel)
        self.retention_channel = mesh_channel(settings.retention_target, settings, settings.max_message_bytes)
        self.retention = retention_pb2_grpc.RetentionStub(self.retention_channel)
        # Which dependencies answered their last health check (ready() updates it).
        self.live = {"inference": True, "accounts": True, "retention": True}

    async def authenticate(self, api_key: str, context: grpc.aio.ServicerContext) -> accounts_pb2.AuthenticateResponse:
        """The account behind an API key; its errors (UNAUTHENTICATED, ...) raised as ServiceError."""
        return await self.accounts_call(
            context, self.accounts.Authenticate, accounts_pb2.AuthenticateRequest(api_key=api_key)
        )

    def deadline(self, context: grpc.aio.ServicerContext, bound: float) -> float:
        """An outgoing call's timeout: our bound, or less if the caller has less left."""
        remaining = context.time_remaining()
        return bound if remaining is None else max(0.0, min(bound, remaining))

    async def accounts_call(
        self,
        context: grpc.aio.ServicerContext,
        method: Callable[..., Awaitable[Any]],
        request: object,
        forward: tuple[str, ...] = (),
    ) -> Any:
        """Calls accounts, forwarding the named metadata entries; its errors are raised as ServiceError."""
        metadata = [(key, value) for key, value in context.invocation_metadata() or () if key in forward]
        return await self._call(
            context, method, request, self.settings.accounts_timeout_s, ACCOUNTS_UNAVAILABLE, metadata
        )

    async def retention_call(
        self, context: grpc.aio.ServicerContext, method: Callable[..., Awaitable[Any]], request: object
    ) -> Any:
        """Calls retention; its errors are raised as ServiceError."""
        return await self._call(context, method, request, self.settings.retention_timeout_s, RETENTION_UNAVAILABLE)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: Callable[..., Awaitable[Any]],
        request: object,
        bound_s: float,
        unavailable: str,
        metadata: list[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return await method(request, metadata=metadata or [], timeout=self.deadline(context, bound_s))
        except grpc.aio.AioRpcError as error:
            raise ServiceError.from_downstream(error, unavailable) from None

    async def ready(self) -> bool:
        """The gateway's own readiness: always, once it runs. It serves what its live
        dependencies allow (removals without retention; fetches by token without accounts),
        so an outage behind it never takes it out of rotation; what cannot be served now is
        refused with UNAVAILABLE. Each round notes which dependencies answer (`live`)."""
        checks = await asyncio.gather(
            self._serving(self.inference_channel, INFERENCE_SERVICE),
            self._serving(self.accounts_channel, ACCOUNTS_SERVICE),
            self._serving(self.retention_channel, RETENTION_SERVICE),
        )
        changed = {name: ok for name, ok in zip(self.live, checks, strict=True) if self.live[name] != ok}
        for name, ok in changed.items():
            log.warning("dependency %s is %s", name, "back" if ok else "unavailable")
        self.live.update(changed)
        return True

    async def _serving(self, channel: grpc.aio.Channel, service: str) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.settings.health_check_timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.inference_channel.close()
        await self.accounts_channel.close()
        await self.retention_channel.close()


def _reason(error: ServiceError) -> str | None:
    """The google.rpc.ErrorInfo reason of an error, ours or passed on from a downstream."""
    if error.reason:
        return error.reason
    for detail in status_details(error.to_proto()):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail.reason
    return None


def refuse_if_restricted(caller: accounts_pb2.AuthenticateResponse) -> None:
    """Restriction of processing: the account is kept, its images are not processed. (Checked
    again by AuthorizeAndReserve, since admission may have let the call in on an answer a few
    seconds old.)"""
    if caller.processing_restricted:
        raise processing_restricted()


def _report_charge(response: cutout_pb2.RemoveBackgroundResponse, millicredits: int) -> None:
    response.credits_charged_decimal = credits.text(millicredits)
    response.credits_charged = credits.whole(millicredits)  # the older field: whole credits


def _inference_error(error: grpc.aio.AioRpcError) -> ServiceError:
    return ServiceError.from_downstream(error, INFERENCE_UNAVAILABLE)


def _duration(seconds: float) -> duration_pb2.Duration:
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(round(seconds * 1e9))
    return elapsed


class _Stream:
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


def _forwarded(name: str, forward: tuple[str, ...], stub: str = "accounts") -> Callable[..., Awaitable[Any]]:
    """A handler that passes the request and the caller's credentials on to accounts."""

    async def handler(self: Any, request: object, context: grpc.aio.ServicerContext) -> Any:
        method = getattr(getattr(self.down, stub), name)
        return await self.down.accounts_call(context, method, request, forward)

    handler.__name__ = name
    return handler


class CutoutServicer(cutout_pb2_grpc.CutoutServicer):
    def __init__(self, settings: GatewaySettings, down: Downstreams) -> None:
        self.settings = settings
        self.down = down
        self.charger = Charger(settings, down.accounts, down.accounts_call)
        # Stream items in flight over all streams of this process (flow control).
        # at most account_stream_items_in_flight of them for one account.
        self._stream_slots = FairSlots(settings.process_stream_items_in_flight, settings.account_stream_items_in_flight)

    async def RemoveBackground(
        self, request: cutout_pb2.RemoveBackgroundRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.RemoveBackgroundResponse:
        started = time.perf_counter()
        caller = await self._authenticate(context)
        response, _ = await self._remove(context, caller, request)
        response.timings.total_ms = (time.perf_counter() - started) * 1000
        return response

    async def EraseRegions(
        self, request: erase_pb2.EraseRegionsRequest, context: grpc.aio.ServicerContext
    ) -> erase_pb2.EraseRegionsResponse:
        started = time.perf_counter()
        caller = await self._authenticate(context)
        response, _ = await self._erase(context, caller, request)
        response.timings.total_ms = (time.perf_counter() - started) * 1000
        return response

    async def RemoveBackgroundStream(
        self, request_iterator: AsyncIterator[cutout_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        started = time.perf_counter()
        try:
            caller = await self._authenticate(context)
        except ServiceError as error:
            await abort(context, error)
        stream = _Stream(context, self.settings.stream_items_in_flight)
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
                    caller = await self._authenticate(context, fresh=True)
                    authenticated_at = time.monotonic()
                await self._stream_slots.acquire(caller.account_id)
                stream.start(self._stream_item(stream, caller, request.item, defaults))
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
                await self._authenticate(context, fresh=True)
            except ServiceError as error:
                if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    revoked.append(error)
                    if stream_task is not None:
                        stream_task.cancel()
                    return
                # accounts briefly unavailable: the stream goes on, the next round asks again

    async def _stream_item(
        self,
        stream: _Stream,
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
                _, charged = await self._erase(stream.context, caller, erase, deliver_erased)
            else:
                request = cutout_pb2.RemoveBackgroundRequest(
                    image=item.image,
                    options=item.options if item.HasField("options") else defaults,
                    idempotency_key=item.idempotency_key,
                )

                async def deliver(response: cutout_pb2.RemoveBackgroundResponse, handoff: Handoff) -> None:
                    response.timings.total_ms = (time.perf_counter() - started) * 1000
                    await stream.write(cutout_pb2.StreamItemResult(id=item.id, response=response), handoff)

                _, charged = await self._remove(stream.context, caller, request, deliver)
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
            self._stream_slots.release(caller.account_id)
            stream.slots.release()

    async def _remove(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        request: cutout_pb2.RemoveBackgroundRequest,
        deliver: Deliver[cutout_pb2.RemoveBackgroundResponse] | None = None,
    ) -> tuple[cutout_pb2.RemoveBackgroundResponse, int]:
        """One charged removal and the credits it cost (services/gateway/charging.py says how).
        Errors are raised as ServiceError."""
        refuse_if_restricted(caller)
        size = request.options.size or options_pb2.SIZE_FULL
        if size not in (options_pb2.SIZE_PREVIEW, options_pb2.SIZE_FULL, options_pb2.SIZE_AUTO):
            raise invalid_argument(
                f"unknown size {size}; use SIZE_PREVIEW, SIZE_FULL or SIZE_AUTO", field="options.size"
            )
        await asyncio.to_thread(check_removal, request.image, request.options, self.settings.max_image_bytes)
        if request.options.keep_result and not self.down.live["retention"]:
            # Refused before any credit or work: removals without keep_result go on.
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                "results cannot be kept right now (the retention service is unavailable); nothing was charged. "
                "Retry later, or remove without keep_result",
                reason="DEPENDENCY_UNAVAILABLE",
                retry_after_s=5.0,
            )
        idempotency_key, keyed = new_key(request.idempotency_key)
        if size == options_pb2.SIZE_AUTO:
            # The size depends on what the balance covers, so it is settled before inference starts.
            reserve, reserved, request = await self._reserve_auto(context, caller, request, idempotency_key)
            segmenting = self._segment(context, request)
        else:
            reserve = accounts_pb2.ReserveRequest(
                account_id=caller.account_id,
                idempotency_key=idempotency_key,
                amount_millicredits=self._price(size),
                request_hash=await asyncio.to_thread(request_hash, request),
            )
            reserved, segmenting = await self.charger.reserve_then_start(
                context, reserve, functools.partial(self._segment, context, request), keyed=keyed
            )

        async def finish(segmented: inference_pb2.SegmentResponse) -> cutout_pb2.RemoveBackgroundResponse:
            # Keeping is part of what is charged: if it fails, the request fails uncharged.
            kept = None
            if request.options.keep_result:
                kept = await self._keep(context, caller, segmented.result, request.options)
            response = cutout_pb2.RemoveBackgroundResponse(
                result=segmented.result, timings=segmented.timings, kept=kept
            )
            _report_charge(response, reserve.amount_millicredits)  # what committing charges
            return response

        async def discard(response: cutout_pb2.RemoveBackgroundResponse) -> None:
            if response.HasField("kept"):  # kept for a result that was never handed over
                await self._discard_kept(caller, response.kept.result_id)

        response = await self.charger.charged(
            context, reserve, reserved, segmenting, finish, deliver, _inference_error, discard
        )
        return response, reserve.amount_millicredits

    async def _erase(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        request: erase_pb2.EraseRegionsRequest,
        deliver: Deliver[erase_pb2.EraseRegionsResponse] | None = None,
    ) -> tuple[erase_pb2.EraseRegionsResponse, int]:
        """One charged erase (EraseRegions or a stream item carrying regions), as `_remove`."""
        refuse_if_restricted(caller)
        await asyncio.to_thread(check_erase, request, self.settings.max_image_bytes)
        idempotency_key, keyed = new_key(request.idempotency_key)
        reserve = accounts_pb2.ReserveRequest(
            account_id=caller.account_id,
            idempotency_key=idempotency_key,
            amount_millicredits=credits.to_milli(self.settings.price_per_erase),
            request_hash=await asyncio.to_thread(erase_hash, request),
        )

        def start() -> asyncio.Future[erase_pb2.EraseRegionsResponse]:
            return asyncio.ensure_future(
                self.down.inference.Erase(
                    inference_pb2.EraseRequest(image=request.image, regions=request.regions),
                    timeout=self.down.deadline(context, self.settings.inference_timeout_s),
                )
            )

        reserved, erasing = await self.charger.reserve_then_start(context, reserve, start, keyed=keyed)

        async def finish(erased: erase_pb2.EraseRegionsResponse) -> erase_pb2.EraseRegionsResponse:
            return erased

        response = await self.charger.charged(context, reserve, reserved, erasing, finish, deliver, _inference_error)
        return response, reserve.amount_millicredits

    def _price(self, size: int) -> int:
        """The price of a size, in millicredits (the ledger's unit)."""
        price = self.settings.price_preview if size == options_pb2.SIZE_PREVIEW else self.settings.price_full
        return credits.to_milli(price)

    def _segment(
        self, context: grpc.aio.ServicerContext, request: cutout_pb2.RemoveBackgroundRequest
    ) -> asyncio.Future[inference_pb2.SegmentResponse]:
        return asyncio.ensure_future(
            self.down.inference.Segment(
                inference_pb2.SegmentRequest(image=request.image, options=request.options),
                timeout=self.down.deadline(context, self.settings.inference_timeout_s),
            )
        )

    async def _reserve_auto(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        request: cutout_pb2.RemoveBackgroundRequest,
        idempotency_key: str,
    ) -> tuple[accounts_pb2.ReserveRequest, accounts_pb2.ReserveResponse, cutout_pb2.RemoveBackgroundRequest]:
        """SIZE_AUTO: FULL if the balance covers it, else PREVIEW; the reservation and the request
        with the size it resolved to.

        Each size is reserved under the hash of the request as resolved, so a retry of a call
        that was made at PREVIEW meets IDEMPOTENCY_KEY_REUSED at FULL, then its own charge at
        PREVIEW, and is served at the size it paid for.
        """
        first_error: ServiceError | None = None
        for size in (options_pb2.SIZE_FULL, options_pb2.SIZE_PREVIEW):
            resolved = cutout_pb2.RemoveBackgroundRequest()
            resolved.CopyFrom(request)
            resolved.options.size = size
            reserve = accounts_pb2.ReserveRequest(
                account_id=caller.account_id,
                idempotency_key=idempotency_key,
                amount_millicredits=self._price(size),
                request_hash=await asyncio.to_thread(request_hash, resolved),
            )
            try:
                return reserve, await self.charger.reserve(context, reserve), resolved
            except ServiceError as error:
                if _reason(error) not in ("INSUFFICIENT_CREDITS", "IDEMPOTENCY_KEY_REUSED"):
                    raise
                first_error = first_error or error
        assert first_error is not None
        raise first_error

    async def _keep(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        result: options_pb2.CutoutImage,
        options: options_pb2.RemoveBackgroundOptions,
    ) -> options_pb2.KeptResult:
        header = retention_pb2.StoreHeader(
            account_id=caller.account_id,
            plan=caller.plan,
            media_type=result.media_type,
            width=result.width,
            height=result.height,
            ttl=options.keep_ttl if options.HasField("keep_ttl") else None,
        )

        def chunks() -> Iterator[retention_pb2.StoreChunk]:
            first: retention_pb2.StoreHeader | None = header
            for piece in pieces(result.image, self.settings.retention_chunk_bytes):
                yield retention_pb2.StoreChunk(header=first, data=piece)
                first = None

        try:
            stored = await self.down.retention.Store(
                chunks(), timeout=self.down.deadline(context, self.settings.retention_timeout_s)
            )
        except grpc.aio.AioRpcError as error:
            log.info("keeping a result failed: %s (not charged)", error.code().name)
            raise ServiceError.from_downstream(
                error, "the result could not be kept (retention unavailable); nothing was charged, retry"
            ) from None
        return stored.result

    async def FetchResult(
        self, request: cutout_pb2.FetchResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[options_pb2.ResultChunk]:
        if request.WhichOneof("result") == "token":
            # The token is the capability: no API key needed, none looked at.
            call = self.down.retention.FetchByToken(
                retention_pb2.FetchByTokenRequest(token=request.token),
                timeout=self.down.deadline(context, self.settings.retention_timeout_s),
            )
        else:
            try:
                caller = await self._authenticate(context)
            except ServiceError as error:
                await abort(context, error)
            call = self.down.retention.FetchOwned(
                retention_pb2.OwnedResultRequest(account_id=caller.account_id, result_id=request.result_id),
                timeout=self.down.deadline(context, self.settings.retention_timeout_s),
            )
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as error:
            await relay(context, error, RETENTION_UNAVAILABLE)

    async def ListResults(
        self, request: cutout_pb2.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.ListResultsResponse:
        caller = await self._authenticate(context)
        listed = await self.down.retention_call(
            context,
            self.down.retention.ListOwned,
            retention_pb2.ListOwnedRequest(account_id=caller.account_id, limit=request.limit),
        )
        return cutout_pb2.ListResultsResponse(results=listed.results)

    async def DeleteResult(
        self, request: cutout_pb2.DeleteResultRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.DeleteResultResponse:
        caller = await self._authenticate(context)
        await self.down.retention_call(
            context,
            self.down.retention.DeleteOwned,
            retention_pb2.OwnedResultRequest(account_id=caller.account_id, result_id=request.result_id),
        )
        return cutout_pb2.DeleteResultResponse()

    async def _authenticate(
        self, context: grpc.aio.ServicerContext, *, fresh: bool = False
    ) -> accounts_pb2.AuthenticateResponse:
        """The caller, as admission found it (services/gateway/admission.py), or asked again."""
        admitted = admitted_caller.get()
        if admitted is not None and not fresh:
            return admitted
        return await self.down.authenticate(api_key(context), context)

    async def _discard_kept(self, caller: accounts_pb2.AuthenticateResponse, result_id: str) -> None:
        """Deletes a result kept for a call that failed after keeping it (nothing half-done stays)."""
        try:
            await self.down.retention.DeleteOwned(
                retention_pb2.OwnedResultRequest(account_id=caller.account_id, result_id=result_id),
                timeout=self.settings.retention_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("a kept result of a failed call could not be deleted (%s)", error.code().name)

    # -- your data (README, "Your data") ---------------------------------------------------

    async def ExportAccount(
        self, request: rights_pb2.ExportAccountRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rights_pb2.ExportChunk]:
        """Everything held about the caller, as a zip archive built and sent piece by piece
        (one kept result in memory at a time)."""
        try:
            caller = await self._authenticate(context)
            held = await self.down.accounts_call(
                context, self.down.accounts.ExportAccount, rights_pb2.AccountExportRequest(), self.KEY
            )
            listed = await self.down.retention_call(
                context,
                self.down.retention.ListOwned,
                retention_pb2.ListOwnedRequest(account_id=caller.account_id, limit=1000),
            )
            access = await self._access_log(context, caller, limit=10_000)
        except ServiceError as error:
            await abort(context, error)
        archive = export.Archive()
        for name, document in export.documents(held, listed.results, access):
            archive.add_json(name, document)
            yield rights_pb2.ExportChunk(data=archive.take())
        if request.include_results:
            for kept in listed.results:
                call = self.down.retention.FetchOwned(
                    retention_pb2.OwnedResultRequest(account_id=caller.account_id, result_id=kept.result_id),
                    timeout=self.down.deadline(context, self.settings.retention_timeout_s),
                )
                try:
                    data = b"".join([chunk.data async for chunk in call])
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        continue  # expired or deleted since the listing
                    await relay(context, error, RETENTION_UNAVAILABLE)
                archive.add_file(export.result_name(kept), data)
                for piece in pieces(archive.take(), self.settings.retention_chunk_bytes):
                    yield rights_pb2.ExportChunk(data=piece)
        archive.close()
        yield rights_pb2.ExportChunk(data=archive.take())

    async def _access_log(
        self, context: grpc.aio.ServicerContext, caller: accounts_pb2.AuthenticateResponse, limit: int
    ) -> list[rights_pb2.AccessRecord]:
        """The owner's access log from accounts and retention, newest first."""
        held = await self.down.accounts_call(
            context, self.down.accounts.ListAccessLog, rights_pb2.OwnerAccessLogRequest(limit=limit), self.KEY
        )
        kept = await self.down.retention_call(
            context, self.down.retention.ListAccessLog, retention_pb2.ListAccessLogRequest(account_id=caller.account_id)
        )
        records = list(held.entries) + [
            rights_pb2.AccessRecord(
                at=entry.at, actor=entry.actor, action=entry.action, service="retention", result_id=entry.result_id
            )
            for entry in kept.entries
        ]
        records.sort(key=lambda record: (record.at.seconds, record.at.nanos), reverse=True)
        return records[:limit]

    async def ListAccessLog(
        self, request: rights_pb2.OwnerAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> rights_pb2.OwnerAccessLogResponse:
        caller = await self._authenticate(context)
        entries = await self._access_log(context, caller, min(request.limit or 1000, 10_000))
        return rights_pb2.OwnerAccessLogResponse(entries=entries)

    async def SignUp(self, request: Message, context: grpc.aio.ServicerContext) -> Any:
        # The source address, from the connection (never from the client's metadata), for
        # accounts' cap on free grants per source.
        return await self.down._call(
            context,
            self.down.accounts.SignUp,
            request,
            self.settings.accounts_timeout_s,
            ACCOUNTS_UNAVAILABLE,
            [(SOURCE_METADATA, source_address(context))],
        )

    KEY = (API_KEY_METADATA,)
    VerifySignUp = _forwarded("VerifySignUp", ())
    ChangeEmail = _forwarded("ChangeEmail", KEY)
    DeleteAccount = _forwarded("DeleteAccount", KEY)
    CreateApiKey = _forwarded("CreateApiKey", KEY)
    ListApiKeys = _forwarded("ListApiKeys", KEY)
    RevokeApiKey = _forwarded("RevokeApiKey", KEY)
    GetBalance = _forwarded("GetBalance", KEY)
    ListLedger = _forwarded("ListLedger", KEY)
    GetProfile = _forwarded("GetProfile", KEY)
    UpdateProfile = _forwarded("UpdateProfile", KEY)
    ChangePassword = _forwarded("ChangePassword", KEY)


def build(settings: GatewaySettings) -> ServiceSpec:
    down = Downstreams(settings)
    cutout = CutoutServicer(settings, down)

    def register(server: grpc.aio.Server) -> None:
        cutout_pb2_grpc.add_CutoutServicer_to_server(cutout, server)

    service_names = [cutout_pb2.DESCRIPTOR.services_by_name["Cutout"].full_name]
    return ServiceSpec(
        service_names=service_names,
        interceptors=[Admission(settings, service_names, down.authenticate)],
        register=register,
        ready=down.ready,
        close=down.close,
    )
