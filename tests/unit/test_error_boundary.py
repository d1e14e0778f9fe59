"""The one error boundary (services/common/errors.py) on a real gRPC server started the way
every service starts (services/common/server.py): known errors keep their status and
details, anything else is INTERNAL with an opaque error id that the log has beside the
exception; the exception's text never reaches the caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.rpc import error_details_pb2
from sqlalchemy.exc import OperationalError

from services.common.errors import error_details, invalid_argument
from services.common.server import ServiceSpec, start_service
from services.common.settings import ServiceSettings
from services.common.sql import database_errors

SECRET = "customer@example.com said hunter2"
SERVICE = "test.Boom"


async def _raises(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    kind = request.decode()
    if kind == "bug":
        raise RuntimeError(SECRET)
    if kind == "known":
        raise invalid_argument("width must be positive", field="width")
    if kind == "database":
        raise OperationalError("SELECT secret FROM t WHERE email = %(e)s", {"e": SECRET}, Exception(SECRET))
    if kind == "downstream":
        async with grpc.aio.insecure_channel("127.0.0.1:9") as channel:  # nothing listens there
            await channel.unary_unary("/x.Y/Z")(b"", timeout=5)
    return b"fine"


async def _streams(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise KeyError(SECRET)


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_raises),
        "Stream": grpc.unary_stream_rpc_method_handler(_streams),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _call(kind: str, method: str = "Unary") -> tuple[grpc.aio.AioRpcError, list[bytes]]:
    async def scenario() -> tuple[grpc.aio.AioRpcError, list[bytes]]:
        spec = ServiceSpec(service_names=[SERVICE], register=_register, known_errors=database_errors("test"))
        running = await start_service(
            spec, ServiceSettings(port=0, health_interval_s=0.05, shutdown_grace_s=0, shutdown_linger_s=0)
        )
        received: list[bytes] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                try:
                    if method == "Unary":
                        await channel.unary_unary(f"/{SERVICE}/Unary")(kind.encode(), timeout=10)
                    else:
                        async for item in channel.unary_stream(f"/{SERVICE}/Stream")(kind.encode(), timeout=10):
                            received.append(item)
                except grpc.aio.AioRpcError as error:
                    return error, received
        finally:
            await running.stop()
        raise AssertionError("the call succeeded")

    return asyncio.run(scenario())


def _info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    (info,) = [d for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return info


def test_an_unexpected_exception_is_internal_with_an_error_id_that_the_log_has(caplog):
    caplog.set_level(logging.INFO)
    error, _ = _call("bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in error.details() and "RuntimeError" not in error.details()
    info = _info(error)
    error_id = info.metadata["error_id"]
    assert info.reason == "INTERNAL" and len(error_id) == 16 and error_id in error.details()
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "(trace " in logged[0].getMessage() and logged[0].exc_info is not None


def test_a_service_error_keeps_its_status_and_details():
    error, _ = _call("known")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "width must be positive"
    (bad,) = [d for d in error_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    assert bad.field_violations[0].field == "width"


def test_a_known_library_error_maps_to_its_status_without_its_text():
    error, _ = _call("database")
    assert error.code() == grpc.StatusCode.UNAVAILABLE and _info(error).reason == "DATABASE_UNAVAILABLE"
    assert SECRET not in error.details() and "SELECT" not in error.details()


def test_a_downstream_that_is_down_is_unavailable():
    error, _ = _call("downstream")
    assert error.code() == grpc.StatusCode.UNAVAILABLE and _info(error).reason == "DEPENDENCY_UNAVAILABLE"


def test_a_stream_that_fails_midway_ends_internal_after_what_it_sent():
    error, received = _call("any", method="Stream")
    assert received == [b"first"]
    assert error.code() == grpc.StatusCode.INTERNAL and SECRET not in error.details()
