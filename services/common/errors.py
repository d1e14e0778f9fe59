"""gRPC errors with actionable messages and machine-readable details (google.rpc), and
the one error boundary every service's handlers run inside (`ErrorBoundary`)."""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from services.common.telemetry import mark_error

log = logging.getLogger(__name__)

ERROR_DOMAIN = "cutout.v1"
DEPENDENCY_UNAVAILABLE = "a service Cutout depends on is unavailable; retry shortly"


class ServiceError(Exception):
    """An error a handler raises to end the call with `code` and `message`.

    `reason` becomes a google.rpc.ErrorInfo (UPPER_SNAKE_CASE, stable for
    programs to match on), `field` a google.rpc.BadRequest field violation and
    `quota_subject` a google.rpc.QuotaFailure violation (what ran out) and
    `retry_after_s` a google.rpc.RetryInfo (when to try again).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        quota_subject: str | None = None,
        retry_after_s: float | None = None,
        metadata: dict[str, str] | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.quota_subject = quota_subject
        self.retry_after_s = retry_after_s
        self.metadata = metadata or {}
        self._status = status  # a downstream's status, passed on as it came

    @classmethod
    def from_downstream(cls, error: grpc.aio.AioRpcError, unavailable: str) -> ServiceError:
        """A downstream service's error, to pass on to our caller unchanged, details included.

        Transport-level failures of the downstream (UNAVAILABLE without details) become
        UNAVAILABLE with `unavailable` as the message, since the downstream's own wording
        would mean nothing to our caller.
        """
        if error.code() == grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(error) is None:
            return cls(grpc.StatusCode.UNAVAILABLE, unavailable, reason="DEPENDENCY_UNAVAILABLE")
        status = rpc_status.from_call(error)
        if status is None and error.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            # An exception's text (grpc's default for an unhandled one) is never passed on.
            return cls(
                grpc.StatusCode.INTERNAL, "a service Cutout depends on failed; retry", reason="DEPENDENCY_FAILED"
            )
        if status is None:
            status = status_pb2.Status(code=_proto_code(error.code()), message=error.details() or "")
        return cls(error.code(), status.message, status=status)

    def to_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_proto())

    def to_proto(self) -> status_pb2.Status:
        """As a google.rpc.Status message (what a streamed item's error carries)."""
        if self._status is not None:
            return self._status
        details: list[any_pb2.Any] = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
            details.append(_pack(info))
        if self.field:
            violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
            details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
        if self.quota_subject:
            quota = error_details_pb2.QuotaFailure.Violation(subject=self.quota_subject, description=self.message)
            details.append(_pack(error_details_pb2.QuotaFailure(violations=[quota])))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(max(1, round(self.retry_after_s * 1000)))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=_proto_code(self.code), message=self.message, details=details)


def invalid_argument(message: str, *, field: str, reason: str = "INVALID_ARGUMENT") -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    """Ends the call with the error's status and details (raises, never returns)."""
    mark_error(error.code)
    await context.abort_with_status(error.to_status())
    raise AssertionError("abort_with_status returned")


def processing_restricted() -> ServiceError:
    """Restriction of processing (the owner's right): the account is kept, its images are not processed."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "processing is restricted on this account at your request, so no image is processed; lift it "
        "with UpdateProfile (processing_restricted=false) or `cutout account restrict --off`",
        reason="ACCOUNT_RESTRICTED",
    )


async def relay(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, unavailable: str) -> NoReturn:
    """Ends the call with a downstream's error, passed on (see `ServiceError.from_downstream`)."""
    await abort(context, ServiceError.from_downstream(error, unavailable))


def error_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[object]:
    """Unpacks the google.rpc detail messages of a received error (for clients and tests)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return [] if status is None else status_details(status)


def status_details(status: status_pb2.Status) -> list[object]:
    """Unpacks the google.rpc detail messages of a status (say, a streamed item's error)."""
    unpacked = []
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _proto_code(code: grpc.StatusCode) -> int:
    return code_pb2.Code.Value(code.name)


# -- the error boundary ---------------------------------------------------------------

# Maps an exception type a service knows (a database error, say) to the error the caller gets.
KnownErrors = Mapping[type[BaseException], Callable[[Any], ServiceError]]


def reason_of(error: ServiceError) -> str:
    """The google.rpc.ErrorInfo reason of an error, ours or passed on from a downstream ("" if none)."""
    if error.reason:
        return error.reason
    infos = [d for d in status_details(error.to_proto()) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else ""


def internal_error(method: str, error: BaseException) -> ServiceError:
    """INTERNAL with an opaque id; the exception, the id and the trace id go to the log only."""
    error_id = secrets.token_hex(8)
    context = trace.get_current_span().get_span_context()
    trace_id = format(context.trace_id, "032x") if context.is_valid else "-"
    log.error(
        "internal error %s in %s (trace %s): %s",
        error_id,
        method,
        trace_id,
        type(error).__name__,
        exc_info=(type(error), error, error.__traceback__),
    )
    return ServiceError(
        grpc.StatusCode.INTERNAL,
        f"internal error; nothing was charged. Retry, and if it persists quote error id {error_id}",
        reason="INTERNAL",
        metadata={"error_id": error_id},
    )


def to_service_error(method: str, error: Exception, known: KnownErrors = {}) -> ServiceError:  # noqa: B006
    """What a handler's exception becomes: ServiceError as it is, a downstream's error passed on,
    a known type by its mapping, anything else INTERNAL (never its text)."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, grpc.aio.AioRpcError):
        return ServiceError.from_downstream(error, DEPENDENCY_UNAVAILABLE)
    for kind, mapping in known.items():
        if isinstance(error, kind):
            return mapping(error)
    return internal_error(method, error)


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Runs every handler of a server inside one boundary (services/common/server.py installs
    it innermost, so the call's span is current): see `to_service_error`."""

    def __init__(self, known: KnownErrors | None = None) -> None:
        self.known = dict(known or {})

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._wrap(method, behaviour)})  # type: ignore[attr-defined]
        return handler

    def _wrap(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        known = self.known

        async def fail(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
            refused = to_service_error(method, error, known)
            if refused.code != grpc.StatusCode.INTERNAL:
                log.info("%s refused: %s (%s)", method.rsplit("/", 1)[-1], refused.code.name, reason_of(refused))
            await abort(context, refused)

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in behaviour(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await fail(context, error)

            return streaming

        async def unary(request: object, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await fail(context, error)

        return unary
