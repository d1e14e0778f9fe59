"""The retention servicer: store, fetch, list, delete, erase; a periodic sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cutout.v1 import options_pb2, retention_pb2, retention_pb2_grpc
from services.common import pages
from services.common.chunks import pieces
from services.common.errors import ServiceError, abort, invalid_argument
from services.common.server import PeriodicJob, ServiceSpec
from services.common.sql import MigrationsApplied, aware, database_errors, database_ready, make_engine, migrate
from services.common.telemetry import count, meter
from services.retention import crypto
from services.retention.blobstore import BlobStore, LocalBlobStore, S3BlobStore
from services.retention.models import KeptResult
from services.retention.settings import RetentionSettings
from services.retention.store import Fetched, ResultStore, SweepReport

log = logging.getLogger(__name__)

# A caller-chosen result id (StoreHeader.result_id): what retention itself makes, secrets.token_hex(16).
RESULT_ID = re.compile(r"[0-9a-f]{32}")
_stored = meter.create_counter("cutout.retention.stored", description="Results kept")
_swept = meter.create_counter("cutout.retention.swept", description="Results removed by the sweep, by reason")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_retention"
RETENTION = retention_pb2.DESCRIPTOR.services_by_name["Retention"].full_name
# Page sizes (docs/api/pages.md); the access log is paged by the gateway,
# which merges it with accounts' and asks for at most a page of each.
RESULTS_PAGE = pages.PageSize(default=100, maximum=1000)
RESULTS_LIST = "results"
ACCESS_LOG_PAGE = pages.PageSize(default=1000, maximum=10000)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(moment) -> timestamp_pb2.Timestamp:  # type: ignore[no-untyped-def]
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(aware(moment))
    return stamp


def _described(row: KeptResult, token: str = "") -> options_pb2.KeptResult:
    return options_pb2.KeptResult(
        result_id=row.id,
        token=token,
        created_at=_timestamp(row.created_at),
        expires_at=_timestamp(row.expires_at),
        media_type=row.media_type,
        width=row.width,
        height=row.height,
        size=row.size,
    )


class RetentionServicer(retention_pb2_grpc.RetentionServicer):
    def __init__(self, settings: RetentionSettings, store: ResultStore) -> None:
        self.settings = settings
        self.store = store

    def _ttl(self, header: retention_pb2.StoreHeader) -> timedelta:
        maximum = timedelta(days=self.settings.plan_max_ttl_days.get(header.plan, self.settings.default_ttl_days))
        if not header.HasField("ttl"):
            return min(timedelta(days=self.settings.default_ttl_days), maximum)
        # Compared in seconds first: a huge Duration does not fit a timedelta (OverflowError).
        if header.ttl.seconds > maximum.total_seconds():
            raise invalid_argument(
                f"keep_ttl may be at most {maximum.days} days on the {header.plan or 'default'} plan",
                field="options.keep_ttl",
                reason="TTL_OVER_PLAN_MAXIMUM",
            )
        asked = header.ttl.ToTimedelta()
        if asked <= timedelta(0):
            raise invalid_argument(
                "keep_ttl must be positive; leave it unset for the default", field="options.keep_ttl"
            )
        if asked > maximum:
            raise invalid_argument(
                f"keep_ttl may be at most {maximum.days} days on the {header.plan or 'default'} plan",
                field="options.keep_ttl",
                reason="TTL_OVER_PLAN_MAXIMUM",
            )
        return asked

    async def Store(
        self, request_iterator: AsyncIterator[retention_pb2.StoreRequest], context: grpc.aio.ServicerContext
    ) -> retention_pb2.StoreResponse:
        header: retention_pb2.StoreHeader | None = None
        parts: list[bytes] = []
        size = 0
        async for chunk in request_iterator:
            if header is None:
                if not chunk.HasField("header"):
                    raise invalid_argument("the first chunk must carry the header", field="header")
                header = chunk.header
            size += len(chunk.data)
            if size > self.settings.max_result_bytes:
                raise invalid_argument(
                    f"results up to {self.settings.max_result_bytes // 2**20} MiB can be kept", field="data"
                )
            parts.append(chunk.data)
        if header is None or not header.account_id:
            raise invalid_argument("a store needs a header with the account id", field="header")
        if header.result_id and not RESULT_ID.fullmatch(header.result_id):
            raise invalid_argument("result_id is 32 lowercase hex digits, or empty", field="header.result_id")
        storing = asyncio.ensure_future(
            asyncio.to_thread(
                self.store.store,
                header.account_id,
                b"".join(parts),
                media_type=header.media_type,
                width=header.width,
                height=header.height,
                ttl=self._ttl(header),
                result_id=header.result_id,
            )
        )
        try:
            stored = await asyncio.shield(storing)
        except asyncio.CancelledError:
            # The caller gave up while this was written (its deadline passed, say while a
            # network held its bytes): it was told nothing was kept, so nothing stays.
            with contextlib.suppress(Exception):
                stored = await storing
                await asyncio.to_thread(self.store.delete, header.account_id, stored.result.id)
            raise
        count(_stored, 1)
        return retention_pb2.StoreResponse(result=_described(stored.result, stored.token))

    async def FetchByToken(
        self, request: retention_pb2.FetchByTokenRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[retention_pb2.FetchByTokenResponse]:
        fetched = await asyncio.to_thread(self.store.fetch_by_token, request.token)
        for result, data in self._pieces(fetched):
            yield retention_pb2.FetchByTokenResponse(result=result, data=data)

    async def FetchOwned(
        self, request: retention_pb2.FetchOwnedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[retention_pb2.FetchOwnedResponse]:
        fetched = await asyncio.to_thread(self.store.fetch_owned, request.account_id, request.result_id)
        for result, data in self._pieces(fetched):
            yield retention_pb2.FetchOwnedResponse(result=result, data=data)

    def _pieces(self, fetched: Fetched) -> Iterator[tuple[options_pb2.KeptResult | None, bytes]]:
        """A fetched result in pieces: the first one carries its description."""
        described: options_pb2.KeptResult | None = _described(fetched.result)
        for piece in pieces(fetched.data, self.settings.chunk_bytes):
            yield described, piece
            described = None

    async def ListOwned(
        self, request: retention_pb2.ListOwnedRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.ListOwnedResponse:
        if not request.account_id:
            raise invalid_argument("whose results? account_id is empty", field="account_id")
        size = RESULTS_PAGE.of(request.page_size, request.limit)
        position = pages.decode(request.page_token, request.account_id, RESULTS_LIST)
        after = None
        if position is not None:
            after = (pages.time_field(position, "t"), pages.field(position, "id", str))
        rows = await asyncio.to_thread(self.store.list, request.account_id, size + 1, after)
        response = retention_pb2.ListOwnedResponse(results=[_described(row) for row in rows[:size]])
        if len(rows) > size:  # one more than a page was there: the next page starts after the last shown
            last = rows[size - 1]
            moment = aware(last.created_at)
            micros = (moment - EPOCH) // timedelta(microseconds=1)
            response.next_page_token = pages.encode(request.account_id, RESULTS_LIST, {"t": micros, "id": last.id})
        return response

    async def DeleteOwned(
        self, request: retention_pb2.DeleteOwnedRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.DeleteOwnedResponse:
        await asyncio.to_thread(self.store.delete, request.account_id, request.result_id)
        return retention_pb2.DeleteOwnedResponse()

    async def EraseAccount(
        self, request: retention_pb2.EraseAccountRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.EraseAccountResponse:
        if not request.account_id:
            await abort(context, invalid_argument("which account? account_id is empty", field="account_id"))
        try:
            erased = await asyncio.to_thread(self.store.erase_account, request.account_id)
        except Exception as error:  # the record stays unfinished: the sweep, or a retry, completes it
            log.error("erasure interrupted: %s; it will be resumed", type(error).__name__)
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the erasure started (the account's key is destroyed) but did not finish; it resumes by itself",
                    reason="ERASURE_PENDING",
                ),
            )
        log.info("account erased: %d results", erased)
        return retention_pb2.EraseAccountResponse(results_erased=erased)

    async def ListAccessLog(
        self, request: retention_pb2.ListAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.ListAccessLogResponse:
        limit = ACCESS_LOG_PAGE.of(0, request.limit)
        entries = await asyncio.to_thread(self.store.access_log, request.account_id, limit, request.before_id)
        return retention_pb2.ListAccessLogResponse(
            entries=[
                retention_pb2.AccessLogEntry(
                    at=_timestamp(e.at), actor=e.actor, action=e.action, result_id=e.result_id, id=e.id or 0
                )
                for e in entries
            ]
        )


def open_blob_store(settings: RetentionSettings) -> BlobStore:
    if settings.blob_store == "local":
        store = LocalBlobStore(settings.blob_dir)
        store.remove_partials()  # what a crash interrupted mid-write
        return store
    if settings.blob_store == "s3":
        if not settings.s3_bucket:
            raise ValueError("CUTOUT_RETENTION_S3_BUCKET is required with CUTOUT_RETENTION_BLOB_STORE=s3")
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
        return S3BlobStore(client, settings.s3_bucket, settings.s3_prefix)
    raise ValueError(f"CUTOUT_RETENTION_BLOB_STORE must be local or s3, not {settings.blob_store!r}")


def _storage_unavailable(error: OSError) -> ServiceError:
    """The blob store failed (a full disk, an unreachable S3): nothing was kept; retry later."""
    log.error("blob store error %s (errno %s)", type(error).__name__, error.errno)
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "results cannot be kept right now (storage unavailable); nothing was kept or charged, retry later",
        reason="STORAGE_UNAVAILABLE",
        retry_after_s=5.0,
    )


def open_database(settings: RetentionSettings) -> Engine:
    engine = make_engine(settings.database_url)
    if settings.migrate_on_start:
        migrate(engine, MIGRATIONS, version_table=VERSION_TABLE)
    return engine


def build(settings: RetentionSettings) -> ServiceSpec:
    engine = open_database(settings)
    migrations_applied = MigrationsApplied(engine, MIGRATIONS, version_table=VERSION_TABLE)
    store = ResultStore(
        engine,
        open_blob_store(settings),
        crypto.MasterKeys.parse(settings.master_key_spec()),
        pending_timeout=timedelta(seconds=settings.pending_timeout_s),
        erase_delete_interval_s=settings.erase_delete_interval_s,
        access_log_lifetime=timedelta(days=settings.access_log_days),
    )
    # An erasure a crash interrupted is finished before anything is served (when the schema
    # is not current yet, the migration Job's turn, the sweep finishes it later).
    try:
        resumed = store.resume_erasures()
    except SQLAlchemyError as error:
        log.warning("interrupted erasures not resumed at start (%s); the sweep will", type(error).__name__)
    else:
        if resumed:
            log.info("resumed %d interrupted erasures", resumed)
    servicer = RetentionServicer(settings, store)

    def sweep() -> SweepReport:
        report = store.sweep()
        _swept.add(report.expired, {"reason": "expired"})
        _swept.add(report.abandoned, {"reason": "abandoned"})
        return report

    async def close() -> None:
        engine.dispose()

    return ServiceSpec(
        service_names=[RETENTION],
        register=lambda server: retention_pb2_grpc.add_RetentionServicer_to_server(servicer, server),
        callers_by_method={f"/{RETENTION}/EraseAccount": settings.erase_callers},
        ready=lambda: database_ready(engine, migrations_applied),
        close=close,
        jobs=[PeriodicJob("sweep", settings.sweep_interval_s, sweep)],
        known_errors={**database_errors("retention"), OSError: _storage_unavailable},
    )
