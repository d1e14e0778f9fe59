"""Kept results and the caller's own data: fetch, list and delete results; export the
account; read its access log (README, "Your data").

Retention holds the results and its half of the access log, accounts the rest; the
gateway only asks both with the caller's account and joins the answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from cutout.v1 import accounts_pb2, cutout_pb2, options_pb2, retention_pb2, rights_pb2
from services.common.chunks import pieces
from services.common.errors import ServiceError, abort, relay
from services.common.settings import API_KEY_METADATA
from services.gateway import export
from services.gateway.downstreams import RETENTION_UNAVAILABLE, Downstreams
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Accounts reads the caller from the API key, forwarded as it came.
FORWARD_KEY = (API_KEY_METADATA,)


class Results:
    """Serves the calls on kept results and on the caller's data (one instance per process)."""

    def __init__(self, settings: GatewaySettings, down: Downstreams) -> None:
        self.settings = settings
        self.down = down

    async def fetch_result(
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
                caller = await self.down.caller(context)
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

    async def list_results(
        self, request: cutout_pb2.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.ListResultsResponse:
        caller = await self.down.caller(context)
        listed = await self.down.retention_call(
            context,
            self.down.retention.ListOwned,
            retention_pb2.ListOwnedRequest(account_id=caller.account_id, limit=request.limit),
        )
        return cutout_pb2.ListResultsResponse(results=listed.results)

    async def delete_result(
        self, request: cutout_pb2.DeleteResultRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.DeleteResultResponse:
        caller = await self.down.caller(context)
        await self.down.retention_call(
            context,
            self.down.retention.DeleteOwned,
            retention_pb2.OwnedResultRequest(account_id=caller.account_id, result_id=request.result_id),
        )
        return cutout_pb2.DeleteResultResponse()

    async def export_account(
        self, request: rights_pb2.ExportAccountRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rights_pb2.ExportChunk]:
        """Everything held about the caller, as a zip archive built and sent piece by piece
        (one kept result in memory at a time)."""
        try:
            caller = await self.down.caller(context)
            held = await self.down.accounts_call(
                context, self.down.accounts.ExportAccount, rights_pb2.AccountExportRequest(), FORWARD_KEY
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
            context, self.down.accounts.ListAccessLog, rights_pb2.OwnerAccessLogRequest(limit=limit), FORWARD_KEY
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

    async def list_access_log(
        self, request: rights_pb2.OwnerAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> rights_pb2.OwnerAccessLogResponse:
        caller = await self.down.caller(context)
        entries = await self._access_log(context, caller, min(request.limit or 1000, 10_000))
        return rights_pb2.OwnerAccessLogResponse(entries=entries)
