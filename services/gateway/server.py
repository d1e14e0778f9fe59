"""The public servicer cutout.v1.Cutout (administration is not served here: accounts
serves cutout.v1.Admin on a listener of its own, inside the cell).

The gateway is thin, and this module only maps each RPC to the part that does it:

- admission.py: who may call at all (key, rates, concurrency), before a handler runs;
- removals.py: charged work (RemoveBackground, EraseRegions), with charging.py for the
  credits and validation.py for what is refused before any credit is reserved;
- streams.py: RemoveBackgroundStream;
- results.py: kept results and the caller's own data;
- downstreams.py: the channels to inference, accounts and retention.

The account calls are forwarded to accounts unchanged, with the caller's credentials.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from cutout.v1 import (
    account_pb2,
    accounts_pb2,
    cutout_pb2,
    cutout_pb2_grpc,
    erase_pb2,
    inference_pb2,
    options_pb2,
    rights_pb2,
)
from services.common import credits
from services.common.server import ServiceSpec
from services.common.settings import SOURCE_METADATA
from services.common.wire import as_message
from services.gateway.admission import Admission, source_address
from services.gateway.charging import price
from services.gateway.downstreams import Downstreams, inference_error
from services.gateway.removals import Removals
from services.gateway.results import FORWARD_KEY, Results
from services.gateway.settings import GatewaySettings
from services.gateway.streams import Streams


def _forwarded(name: str, forward: tuple[str, ...]) -> Callable[..., Awaitable[Any]]:
    """A handler that passes the request and the caller's credentials on to accounts: the
    public message becomes accounts' own message of the same fields, and its answer the
    public response (services/common/wire.py)."""
    internal_request = getattr(accounts_pb2, f"Accounts{name}Request")
    public_response = _public_response(name)

    async def handler(self: CutoutServicer, request: Message, context: grpc.aio.ServicerContext) -> Any:
        method = getattr(self.down.accounts, name)
        answer = await self.down.accounts_call(context, method, as_message(internal_request, request), forward)
        return as_message(public_response, answer)

    handler.__name__ = name
    return handler


def _public_response(name: str) -> type[Message]:
    """The generated class of the public Cutout method's response type."""
    output = cutout_pb2.DESCRIPTOR.services_by_name["Cutout"].methods_by_name[name].output_type
    return message_factory.GetMessageClass(output)


class CutoutServicer(cutout_pb2_grpc.CutoutServicer):
    def __init__(self, settings: GatewaySettings, down: Downstreams) -> None:
        self.settings = settings
        self.down = down
        self.removals = Removals(settings, down)
        self.streams = Streams(settings, down, self.removals)
        self.results = Results(settings, down)

    async def RemoveBackground(
        self, request: cutout_pb2.RemoveBackgroundRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.RemoveBackgroundResponse:
        started = time.perf_counter()
        caller = await self.down.caller(context)
        response, _ = await self.removals.remove(context, caller, request)
        response.timings.total_ms = (time.perf_counter() - started) * 1000
        return response

    async def ListModels(
        self, request: options_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> options_pb2.ListModelsResponse:
        await self.down.caller(context)  # a key is needed, like every call about the service's work
        try:
            listed = await self.down.inference.ListModels(
                inference_pb2.InferenceListModelsRequest(), timeout=self.down.deadline(context, 10.0)
            )
        except grpc.aio.AioRpcError as error:
            raise inference_error(error) from None
        for model in listed.models:  # what a full-size result by this model costs (charging.price)
            full = options_pb2.RemoveBackgroundOptions(model=model.name, size=options_pb2.SIZE_FULL)
            model.price_decimal = credits.text(price(self.settings, full))
        return options_pb2.ListModelsResponse(models=listed.models)

    async def EraseRegions(
        self, request: erase_pb2.EraseRegionsRequest, context: grpc.aio.ServicerContext
    ) -> erase_pb2.EraseRegionsResponse:
        started = time.perf_counter()
        caller = await self.down.caller(context)
        response, _ = await self.removals.erase(context, caller, request)
        response.timings.total_ms = (time.perf_counter() - started) * 1000
        return response

    async def RemoveBackgroundStream(
        self, request_iterator: AsyncIterator[cutout_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await self.streams.serve(request_iterator, context)

    async def FetchResult(
        self, request: cutout_pb2.FetchResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[options_pb2.ResultChunk]:
        async for chunk in self.results.fetch_result(request, context):
            yield chunk

    async def ListResults(
        self, request: cutout_pb2.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.ListResultsResponse:
        return await self.results.list_results(request, context)

    async def DeleteResult(
        self, request: cutout_pb2.DeleteResultRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.DeleteResultResponse:
        return await self.results.delete_result(request, context)

    async def ExportAccount(
        self, request: rights_pb2.ExportAccountRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rights_pb2.ExportChunk]:
        async for chunk in self.results.export_account(request, context):
            yield chunk

    async def ListAccessLog(
        self, request: rights_pb2.OwnerAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> rights_pb2.OwnerAccessLogResponse:
        return await self.results.list_access_log(request, context)

    async def SignUp(
        self, request: account_pb2.SignUpRequest, context: grpc.aio.ServicerContext
    ) -> account_pb2.SignUpResponse:
        # The source address, from the connection (never from the client's metadata), for
        # accounts' cap on free grants per source.
        answer = await self.down.accounts_call(
            context,
            self.down.accounts.SignUp,
            as_message(accounts_pb2.AccountsSignUpRequest, request),
            extra_metadata=((SOURCE_METADATA, source_address(context)),),
        )
        return as_message(account_pb2.SignUpResponse, answer)

    VerifySignUp = _forwarded("VerifySignUp", ())
    ChangeEmail = _forwarded("ChangeEmail", FORWARD_KEY)
    DeleteAccount = _forwarded("DeleteAccount", FORWARD_KEY)
    CreateApiKey = _forwarded("CreateApiKey", FORWARD_KEY)
    ListApiKeys = _forwarded("ListApiKeys", FORWARD_KEY)
    RevokeApiKey = _forwarded("RevokeApiKey", FORWARD_KEY)
    GetBalance = _forwarded("GetBalance", FORWARD_KEY)
    ListLedger = _forwarded("ListLedger", FORWARD_KEY)
    GetProfile = _forwarded("GetProfile", FORWARD_KEY)
    UpdateProfile = _forwarded("UpdateProfile", FORWARD_KEY)
    ChangePassword = _forwarded("ChangePassword", FORWARD_KEY)


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
