"""Kept results and the caller's own data: fetch, list and delete results; export the
account; read its access log (docs/privacy/index.md#your-data).

Retention holds the results and its half of the access log, accounts the rest; the
gateway only asks both with the caller's account and joins the answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from cutout.v1 import accounts_pb2, cutout_pb2, options_pb2, retention_pb2, rights_pb2
from services.common import pages
from services.common.chunks import pieces
from services.common.errors import ServiceError, abort, relay
from services.common.settings import API_KEY_METADATA
from services.gateway import export
from services.gateway.downstreams import RETENTION_UNAVAILABLE, Downstreams
from services.gateway.settings import GatewaySettings

# Accounts reads the caller from the API key, forwarded as it came.
FORWARD_KEY = (API_KEY_METADATA,)
# The public access log's pages (docs/api/pages.md); the gateway keeps its page
# token, since it merges accounts' half with retention's.
ACCESS_LOG_PAGE = pages.PageSize(default=1000, maximum=10000)
ACCESS_LOG_LIST = "access_log"
EXPORT_ACCESS_LOG = 10_000  # records of the access log an export holds (the newest)


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
                retention_pb2.FetchOwnedRequest(account_id=caller.account_id, result_id=request.result_id),
                timeout=self.down.deadline(context, self.settings.retention_timeout_s),
            )
        try:
            async for chunk in call:
                yield options_pb2.ResultChunk(
                    result=chunk.result if chunk.HasField("result") else None, data=chunk.data
                )
        except grpc.aio.AioRpcError as error:
            await relay(context, error, RETENTION_UNAVAILABLE)

    async def list_results(
        self, request: cutout_pb2.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.ListResultsResponse:
        caller = await self.down.caller(context)
        listed = await self.down.retention_call(
            context,
            self.down.retention.ListOwned,
            retention_pb2.ListOwnedRequest(
                account_id=caller.account_id,
                limit=request.limit,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return cutout_pb2.ListResultsResponse(results=listed.results, next_page_token=listed.next_page_token)

    async def delete_result(
        self, request: cutout_pb2.DeleteResultRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.DeleteResultResponse:
        caller = await self.down.caller(context)
        await self.down.retention_call(
            context,
            self.down.retention.DeleteOwned,
            retention_pb2.DeleteOwnedRequest(account_id=caller.account_id, result_id=request.result_id),
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
                context, self.down.accounts.ExportAccount, accounts_pb2.AccountsExportAccountRequest(), FORWARD_KEY
            )
            results = await self._all_results(context, caller)
            access, _ = await self._access_log(context, caller, EXPORT_ACCESS_LOG, None)
        except ServiceError as error:
            await abort(context, error)
        archive = export.Archive()
        for name, document in export.documents(held, results, access):
            archive.add_json(name, document)
            yield rights_pb2.ExportChunk(data=archive.take())
        if request.include_results:
            for kept in results:
                call = self.down.retention.FetchOwned(
                    retention_pb2.FetchOwnedRequest(account_id=caller.account_id, result_id=kept.result_id),
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

    async def _all_results(
        self, context: grpc.aio.ServicerContext, caller: accounts_pb2.AuthenticateResponse
    ) -> list[options_pb2.KeptResult]:
        """Every kept result of the caller, page after page."""
        results: list[options_pb2.KeptResult] = []
        token = ""
        while True:
            listed = await self.down.retention_call(
                context,
                self.down.retention.ListOwned,
                retention_pb2.ListOwnedRequest(account_id=caller.account_id, page_size=1000, page_token=token),
            )
            results.extend(listed.results)
            token = listed.next_page_token
            if not token:
                return results

    async def _access_log(
        self,
        context: grpc.aio.ServicerContext,
        caller: accounts_pb2.AuthenticateResponse,
        size: int,
        position: dict[str, int] | None,
    ) -> tuple[list[rights_pb2.AccessRecord], dict[str, int] | None]:
        """A page of the owner's access log, accounts' and retention's merged newest first, and
        where the next page starts (None: this was the last).

        Each service pages its half by its own ids (newest first); `position` holds, per
        service, the id of the last record shown (keyset), or -1 once that half is done. Up to
        a page is read from each half, the two merged by time, the first `size` shown."""
        position = dict(position or {"accounts": 0, "retention": 0})
        halves: list[tuple[str, list[tuple[rights_pb2.AccessRecord, int]]]] = []
        if position["accounts"] >= 0:
            held = await self.down.accounts_call(
                context,
                self.down.accounts.ListAccessLog,
                accounts_pb2.AccountsListAccessLogRequest(limit=size, before_id=position["accounts"]),
                FORWARD_KEY,
            )
            # An accounts older than pages sends no ids (0: its half ends with its first page).
            ids = list(held.entry_ids) if len(held.entry_ids) == len(held.entries) else [0] * len(held.entries)
            halves.append(("accounts", list(zip(held.entries, ids, strict=True))))
        if position["retention"] >= 0:
            kept = await self.down.retention_call(
                context,
                self.down.retention.ListAccessLog,
                retention_pb2.ListAccessLogRequest(
                    account_id=caller.account_id, limit=size, before_id=position["retention"]
                ),
            )
            halves.append(
                (
                    "retention",
                    [
                        (
                            rights_pb2.AccessRecord(
                                at=e.at, actor=e.actor, action=e.action, service="retention", result_id=e.result_id
                            ),
                            e.id,
                        )
                        for e in kept.entries
                    ],
                )
            )
        merged = sorted(
            ((record, service, entry_id) for service, records in halves for record, entry_id in records),
            key=lambda item: (item[0].at.seconds, item[0].at.nanos, item[1], item[2]),
            reverse=True,
        )
        shown = merged[:size]
        for service, records in halves:
            taken = [entry_id for _, source, entry_id in shown if source == service]
            if taken:
                position[service] = taken[-1]
            # A half is done once it gave less than a page and all of it was shown.
            if (len(records) < size or not all(entry_id for _, entry_id in records)) and len(taken) == len(records):
                position[service] = -1
        done = all(value < 0 for value in position.values())
        return [record for record, _, _ in shown], None if done else position

    async def list_access_log(
        self, request: rights_pb2.OwnerAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> rights_pb2.OwnerAccessLogResponse:
        caller = await self.down.caller(context)
        size = ACCESS_LOG_PAGE.of(request.page_size, request.limit)
        decoded = pages.decode(request.page_token, caller.account_id, ACCESS_LOG_LIST)
        position = None
        if decoded is not None:
            position = {name: pages.field(decoded, name, int) for name in ("accounts", "retention")}
        entries, following = await self._access_log(context, caller, size, position)
        response = rights_pb2.OwnerAccessLogResponse(entries=entries)
        if following is not None:
            response.next_page_token = pages.encode(caller.account_id, ACCESS_LOG_LIST, following)
        return response
