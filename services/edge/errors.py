"""The gateway's gRPC errors as HTTP answers: remove.bg's shape and statuses for its API,
Google's HTTP mapping of google.rpc.Status for Cutout's own JSON API.

The status and the machine-readable reason come from the gateway's google.rpc details
(ErrorInfo, RetryInfo); the edge adds nothing to what it decided.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import status_details

# gRPC status -> HTTP status (Google's mapping, google/rpc/code.proto), with remove.bg's
# choices where they differ: a bad key is 403, credits that do not cover a call 402.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 403,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
TITLES = {
    400: "Invalid parameters",
    402: "Insufficient credits",
    403: "Authentication failed",
    404: "Not found",
    409: "Conflict",
    413: "File too large",
    429: "Rate limit exceeded",
    501: "Not implemented",
    503: "Service unavailable",
    504: "Timeout",
}
# ErrorInfo reasons that say the balance does not cover the call (remove.bg's 402).
NO_CREDITS = {"INSUFFICIENT_CREDITS"}


@dataclass
class HttpError:
    status: int
    code: str  # remove.bg's errors[].code: the ErrorInfo reason in lower case
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    grpc_status: status_pb2.Status | None = None

    @property
    def title(self) -> str:
        return TITLES.get(self.status, "Error")

    def removebg_body(self) -> dict[str, object]:
        return {"errors": [{"title": self.title, "code": self.code, "detail": self.detail}]}

    def google_body(self) -> dict[str, object]:
        """{"error": {code, message, status, details}} as Google's JSON APIs answer."""
        status = self.grpc_status
        details = []
        if status is not None:
            details = [json_format.MessageToDict(detail) for detail in status.details]
        name = _grpc_name(status.code) if status is not None else _status_name(self.status)
        return {"error": {"code": self.status, "message": self.detail, "status": name, "details": details}}


def from_rpc(error: grpc.aio.AioRpcError) -> HttpError:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    details = status_details(status) if status is not None else []
    reason = next((d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)), "")
    retry = next((d for d in details if isinstance(d, error_details_pb2.RetryInfo)), None)
    http = HTTP_STATUS.get(error.code(), 500)
    if reason in NO_CREDITS:
        http = 402
    headers: dict[str, str] = {}
    if retry is not None and http in (429, 503):
        seconds = max(1, math.ceil(retry.retry_delay.ToTimedelta().total_seconds()))
        headers["Retry-After"] = str(seconds)
        if http == 429:  # remove.bg's rate-limit headers, from what the gateway said
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(math.ceil(time.time()) + seconds)
    if status is None:
        status = status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    code = reason.lower() or error.code().name.lower()
    return HttpError(http, code, error.details() or error.code().name, headers, status)


def _grpc_name(number: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == number), "UNKNOWN")


def _status_name(http: int) -> str:
    return next((code.name for code, value in HTTP_STATUS.items() if value == http), "UNKNOWN")
