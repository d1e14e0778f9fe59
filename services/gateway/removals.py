"""Charged work: a removal or an erase, from its checks to the response handed over.

Used by the unary calls and by every stream item alike. The credits follow
services/gateway/charging.py (reserve, commit before hand-over, undo what was not handed
over); a result asked to be kept is stored in retention as part of what is charged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Iterator

import grpc

from cutout.v1 import accounts_pb2, cutout_pb2, erase_pb2, inference_pb2, options_pb2, retention_pb2
from services.common import credits
from services.common.chunks import pieces
from services.common.errors import ServiceError, invalid_argument, processing_restricted
from services.common.wire import as_message
from services.gateway import fetch, validation
from services.gateway.charging import (
    REPLAY,
    Charger,
    Deliver,
    erase_hash,
    new_key,
    price,
    report_charge,
    request_hash,
    retried,
)
from services.gateway.downstreams import Downstreams, inference_error
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def refuse_if_restricted(caller: accounts_pb2.AuthenticateResponse) -> None:
    """Restriction of processing: the account is kept, its images are not processed. (Checked
    again by AuthorizeAndReserve, since admission may have let the call in on an answer a few
    seconds old.)"""
    if caller.processing_restricted:
        raise processing_restricted()


class Removals:
    """Removals and erasures, charged (one instance per gateway process)."""

    def __init__(self, settings: GatewaySettings, down: Downstreams) -> None:
        self.settings = settings
        self.down = down
        self.charger = Charger(settings, down.accounts, down.accounts_call)

    async def remove(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        request: cutout_pb2.RemoveBackgroundRequest,
        deliver: Deliver[cutout_pb2.RemoveBackgroundResponse] | None = None,
    ) -> tuple[cutout_pb2.RemoveBackgroundResponse, int]:
        """One charged removal and the credits it cost (services/gateway/charging.py says how).
        Errors are raised as ServiceError."""
        refuse_if_restricted(caller)
        request = await self._fetched(request)
        await asyncio.to_thread(validation.check_removal, request.image, request.options, self.settings.max_image_bytes)
        size = request.options.size or options_pb2.SIZE_FULL
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
            reserve, reserved, request = await self.charger.reserve_auto(
                context, caller.account_id, request, idempotency_key
            )
            segmenting = self._segment(context, request)
        else:
            reserve = accounts_pb2.ReserveRequest(
                account_id=caller.account_id,
                idempotency_key=idempotency_key,
                amount_millicredits=price(self.settings, request.options),
                request_hash=await asyncio.to_thread(request_hash, request),
                replay=True,  # a served key is made again, free (charging.py)
            )
            reserved, segmenting = await self.charger.reserve_then_start(
                context, reserve, functools.partial(self._segment, context, request), keyed=keyed
            )

        replay = reserved.outcome == REPLAY
        charge = 0 if replay else reserve.amount_millicredits

        async def finish(segmented: inference_pb2.SegmentResponse) -> cutout_pb2.RemoveBackgroundResponse:
            kept = None
            if replay and request.options.keep_result:  # the same kept result, not a second copy
                kept = await self._kept_again(context, caller, reserved.kept_result_id)
            elif request.options.keep_result:
                # Keeping is part of what is charged: if it fails, the request fails uncharged.
                kept = await self._keep(context, caller, segmented.result, request.options)
            response = cutout_pb2.RemoveBackgroundResponse(
                result=segmented.result, timings=segmented.timings, kept=kept, idempotent_replay=replay
            )
            report_charge(response, charge)  # what committing charges
            return response

        async def discard(response: cutout_pb2.RemoveBackgroundResponse) -> None:
            if response.HasField("kept"):  # kept for a result that was never handed over
                await self._discard_kept(caller, response.kept.result_id)

        def kept_of(response: cutout_pb2.RemoveBackgroundResponse) -> str:
            return response.kept.result_id

        response = await self.charger.charged(
            context, reserve, reserved, segmenting, finish, deliver, inference_error, discard, kept_of
        )
        return response, charge

    async def erase(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        request: erase_pb2.EraseRegionsRequest,
        deliver: Deliver[erase_pb2.EraseRegionsResponse] | None = None,
    ) -> tuple[erase_pb2.EraseRegionsResponse, int]:
        """One charged erase (EraseRegions or a stream item carrying regions), as `remove`."""
        refuse_if_restricted(caller)
        await asyncio.to_thread(validation.check_erase, request, self.settings.max_image_bytes)
        idempotency_key, keyed = new_key(request.idempotency_key)
        reserve = accounts_pb2.ReserveRequest(
            account_id=caller.account_id,
            idempotency_key=idempotency_key,
            amount_millicredits=credits.to_milli(self.settings.price_per_erase),
            request_hash=await asyncio.to_thread(erase_hash, request),
            replay=True,
        )

        def start() -> asyncio.Future[inference_pb2.EraseResponse]:
            return asyncio.ensure_future(
                self.down.inference.Erase(
                    inference_pb2.EraseRequest(image=request.image, regions=request.regions),
                    timeout=self.down.deadline(context, self.settings.inference_timeout_s),
                )
            )

        reserved, erasing = await self.charger.reserve_then_start(context, reserve, start, keyed=keyed)

        replay = reserved.outcome == REPLAY

        async def finish(erased: inference_pb2.EraseResponse) -> erase_pb2.EraseRegionsResponse:
            response = as_message(erase_pb2.EraseRegionsResponse, erased)
            response.idempotent_replay = replay
            return response

        response = await self.charger.charged(context, reserve, reserved, erasing, finish, deliver, inference_error)
        return response, 0 if replay else reserve.amount_millicredits

    async def _fetched(self, request: cutout_pb2.RemoveBackgroundRequest) -> cutout_pb2.RemoveBackgroundRequest:
        """The request with the pictures its URLs point to fetched in (services/gateway/fetch.py),
        before any credit is reserved: a refused or failed fetch is charged nothing."""
        options = request.options
        if not request.image_url and not options.background_image_url:
            return request
        if request.image_url and request.image:
            raise invalid_argument("send image or image_url, not both", field="image_url")
        if options.background_image_url and options.background_image:
            raise invalid_argument(
                "send background_image or background_image_url, not both", field="options.background_image_url"
            )
        # Options that would be refused anyway are refused before any fetch: a placeholder
        # stands for the pictures, whose bytes are checked once fetched.
        probe = options_pb2.RemoveBackgroundOptions()
        probe.CopyFrom(options)
        if probe.background_image_url:
            probe.background_image = b"\0"
        await asyncio.to_thread(validation.check_options, probe)
        rules = self.settings.fetch_rules
        fetched = cutout_pb2.RemoveBackgroundRequest()
        fetched.CopyFrom(request)
        if request.image_url:
            fetched.image = await fetch.fetch(request.image_url, rules, "image_url")
            fetched.ClearField("image_url")
        if options.background_image_url:
            background = await fetch.fetch(options.background_image_url, rules, "options.background_image_url")
            fetched.options.background_image = background
            fetched.options.ClearField("background_image_url")
        return fetched

    def _segment(
        self, context: grpc.aio.ServicerContext, request: cutout_pb2.RemoveBackgroundRequest
    ) -> asyncio.Future[inference_pb2.SegmentResponse]:
        return asyncio.ensure_future(
            self.down.inference.Segment(
                inference_pb2.SegmentRequest(image=request.image, options=request.options),
                timeout=self.down.deadline(context, self.settings.inference_timeout_s),
            )
        )

    async def _keep(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        result: options_pb2.CutoutImage,
        options: options_pb2.RemoveBackgroundOptions,
    ) -> options_pb2.KeptResult:
        # The id is ours, so that a store whose answer is lost can still be deleted.
        result_id = secrets.token_hex(16)
        header = retention_pb2.StoreHeader(
            result_id=result_id,
            account_id=caller.account_id,
            plan=caller.plan,
            media_type=result.media_type,
            width=result.width,
            height=result.height,
            ttl=options.keep_ttl if options.HasField("keep_ttl") else None,
        )

        def chunks() -> Iterator[retention_pb2.StoreRequest]:
            first: retention_pb2.StoreHeader | None = header
            for piece in pieces(result.image, self.settings.retention_chunk_bytes):
                yield retention_pb2.StoreRequest(header=first, data=piece)
                first = None

        try:
            stored = await self.down.retention.Store(
                chunks(), timeout=self.down.deadline(context, self.settings.retention_timeout_s)
            )
        except grpc.aio.AioRpcError as error:
            log.info("keeping a result failed: %s (not charged)", error.code().name)
            # Retention may have kept it all the same (its answer lost, say): it goes.
            self.charger.to_the_end(self._discard_kept(caller, result_id))
            raise ServiceError.from_downstream(
                error, "the result could not be kept (retention unavailable); nothing was charged, retry"
            ) from None
        return stored.result

    async def _kept_again(
        self, context: grpc.aio.ServicerContext, caller: accounts_pb2.AuthenticateResponse, result_id: str
    ) -> options_pb2.KeptResult:
        """A replay's kept result: the one its charged call kept (the token was shown once and is
        not shown again; the owner's key fetches it by id)."""
        gone = ServiceError(
            grpc.StatusCode.ALREADY_EXISTS,
            "this idempotency key was already served and charged, and the result it kept has been deleted or "
            "has expired, so it is not made again; use a new key for a new removal",
            reason="ALREADY_SERVED",
        )
        if not result_id:  # charged by a gateway that did not record it: ListResults has it
            raise gone
        call = self.down.retention.FetchOwned(
            retention_pb2.FetchOwnedRequest(account_id=caller.account_id, result_id=result_id),
            timeout=self.down.deadline(context, self.settings.retention_timeout_s),
        )
        try:
            async for chunk in call:  # the first chunk carries the metadata; the bytes are not needed
                if chunk.HasField("result"):
                    kept = options_pb2.KeptResult()
                    kept.CopyFrom(chunk.result)
                    kept.token = ""
                    return kept
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise gone from None
            raise ServiceError.from_downstream(
                error, "the kept result could not be looked up (retention unavailable); nothing was charged, retry"
            ) from None
        finally:
            call.cancel()
        raise gone

    async def _discard_kept(self, caller: accounts_pb2.AuthenticateResponse, result_id: str) -> None:
        """Deletes a result kept, or perhaps kept, for a call that failed (nothing half-done
        stays), retrying while retention does not answer, up to settle_retry_s."""
        delete = retention_pb2.DeleteOwnedRequest(account_id=caller.account_id, result_id=result_id)
        failed = await retried(
            lambda: self.down.retention.DeleteOwned(delete, timeout=self.settings.retention_timeout_s),
            self.settings.settle_retry_s,
        )
        # NOT_FOUND: never kept (a store cut off first is undone by retention itself).
        if failed not in (None, grpc.StatusCode.NOT_FOUND):
            log.warning("a kept result of a failed call could not be deleted (%s)", failed.name)
